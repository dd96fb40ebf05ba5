// Field-by-field comparison of message bodies (messages.hpp defines no operator==), for the
// round-trip target; the same idea as tests/proto/test_codec.cpp.
#pragma once
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include "pagerd/proto/messages.hpp"

namespace pagerd::fuzz {
using namespace pagerd::proto;

inline auto fields(const Hello& m) { return std::tie(m.required_caps, m.optional_caps, m.name); }
inline auto fields(const Welcome& m) { return std::tie(m.caps, m.page_size, m.max_regions, m.max_mapped_bytes, m.version); }
inline auto fields(const RegisterUffd& m) { return std::tie(m.features, m.flags); }
inline auto fields(const Map& m) { return std::tie(m.addr, m.length, m.file_offset, m.flags, m.prefetch); }
inline auto fields(const Mapped& m) { return std::tie(m.region_id); }
inline auto fields(const CacheMapped& m) { return std::tie(m.region_id); }
inline auto fields(const CachesRequest& m) { return std::tie(m.index); }
inline auto fields(const CachesReply& m)
{
    return std::tie(m.total, m.index, m.dev, m.ino, m.size, m.resident, m.clients, m.regions, m.dirty);
}
inline auto fields(const MapStore& m) { return std::tie(m.addr, m.length, m.offset, m.flags, m.prefetch, m.uri); }
inline auto fields(const StoresRequest& m) { return std::tie(m.index); }
inline auto fields(const StoresReply& m)
{
    return std::tie(m.total, m.index, m.kind, m.uri, m.size, m.connections, m.inflight, m.reads, m.read_bytes,
                    m.read_errors, m.retries, m.timeouts, m.reconnects, m.writes, m.write_bytes, m.write_errors,
                    m.read_latency_avg_ns, m.read_latency_max_ns);
}
inline auto fields(const Unmap& m) { return std::tie(m.region_id); }
inline auto fields(const Ok&) { return std::tie(); }
inline auto fields(const StatusRequest&) { return std::tie(); }
inline auto fields(const StatusReply& m)
{
    return std::tie(m.uptime_ms, m.workers, m.clients, m.regions, m.mapped_bytes, m.faults, m.pages_installed,
                    m.bytes_read, m.sigbus_faults, m.latency_p50_ns, m.latency_p99_ns, m.latency_max_ns,
                    m.user_mode_only_clients, m.requester_flags, m.requester_regions, m.pages_prefetched,
                    m.cache_budget, m.cache_bytes, m.cache_files, m.cache_loads, m.cache_hits, m.cache_evictions,
                    m.cache_refaults, m.cache_dirty_bytes, m.cache_writebacks, m.latency_histogram, m.version);
}
inline auto fields(const Ping& m) { return std::tie(m.nonce); }
inline auto fields(const Pong& m) { return std::tie(m.nonce); }
inline auto fields(const ErrorReply& m) { return std::tie(m.code, m.text); }
inline auto fields(const MapShared& m) { return std::tie(m.addr, m.length, m.file_offset, m.tracking, m.prefetch); }
inline auto fields(const Flush& m) { return std::tie(m.region_id); }
inline auto fields(const Flushed& m) { return std::tie(m.pages, m.bytes); }
inline auto fields(const RegionsRequest& m) { return std::tie(m.first); }
inline auto fields(const PrefetchRequest& m) { return std::tie(m.addr, m.length, m.flags); }
inline auto fields(const RegionEntry& e)
{
    return std::tie(e.client, e.pid, e.access, e.tracking, e.region_id, e.length, e.dirty_pages, e.prefetch,
                    e.faults, e.latency_p50_ns, e.latency_p99_ns, e.prefetch_pending, e.latency_histogram);
}
inline bool same_entries(const std::vector<RegionEntry>& a, const std::vector<RegionEntry>& b)
{
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (fields(a[i]) != fields(b[i])) return false;
    return true;
}

inline bool same_body(const Body& a, const Body& b)
{
    if (a.index() != b.index()) return false;
    return std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            const T& y = std::get<T>(b);
            if constexpr (std::is_same_v<T, RegionsReply>)
                return x.total == y.total && x.first == y.first && same_entries(x.entries, y.entries);
            else
                return fields(x) == fields(y);
        },
        a);
}

}  // namespace pagerd::fuzz
