// Prefetch policies and explicit prefetches: what the daemon loads besides faulting pages.
#include <cerrno>

#include "connection_impl.hpp"

namespace pagerd::libclient {

const char* prefetch_name(Prefetch p)
{
    switch (p) {
    case Prefetch::Sequential: return "sequential";
    case Prefetch::None: return "none";
    case Prefetch::All: return "all";
    }
    return "?";
}

std::optional<Prefetch> parse_prefetch(std::string_view name)
{
    for (const Prefetch p : {Prefetch::Sequential, Prefetch::None, Prefetch::All})
        if (name == prefetch_name(p)) return p;
    return std::nullopt;
}

proto::Prefetch to_wire(Prefetch p)
{
    switch (p) {
    case Prefetch::None: return proto::Prefetch::NONE;
    case Prefetch::All: return proto::Prefetch::ALL;
    case Prefetch::Sequential: break;
    }
    return proto::Prefetch::SEQUENTIAL;
}

Prefetch from_wire(proto::Prefetch p)
{
    switch (p) {
    case proto::Prefetch::NONE: return Prefetch::None;
    case proto::Prefetch::ALL: return Prefetch::All;
    case proto::Prefetch::SEQUENTIAL: break;
    }
    return Prefetch::Sequential;
}

Result<void> check_prefetch(Prefetch p, std::uint64_t daemon_caps)
{
    if (p != Prefetch::Sequential && p != Prefetch::None && p != Prefetch::All)
        return Error::system(EINVAL, "unknown prefetch policy");
    if (p != Prefetch::Sequential && !(daemon_caps & proto::cap::PREFETCH))
        return Error::system(ENOTSUP, std::string("this pagerd has no prefetch policies (asked for \"") +
                                          prefetch_name(p) + "\")");
    return {};
}

Result<void> Connection::prefetch(const void* addr, std::size_t length, bool wait, int wait_ms)
{
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    if (length == 0 || a % m_impl->page_size || length % m_impl->page_size)
        return Error::system(EINVAL, "prefetch: the address and the length must be non-zero multiples of the page size");
    if (!(m_impl->daemon_caps & proto::cap::PREFETCH))
        return Error::system(ENOTSUP, "this pagerd does not take prefetch requests");
    proto::PrefetchRequest m{a, length, wait ? proto::k_prefetch_wait : 0u};
    auto reply = m_impl->request(m, {}, wait ? wait_ms : 0);
    if (!reply) return reply.error();
    if (!std::holds_alternative<proto::Ok>(reply->body))
        return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered PREFETCH with something other than OK");
    return {};
}

}  // namespace pagerd::libclient
