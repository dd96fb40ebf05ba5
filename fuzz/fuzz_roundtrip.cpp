// libFuzzer target: the codec both ways. The request-handling target the issue asks for
// would need the Worker itself (io_uring, a real userfaultfd, sockets: see README.md,
// "Fuzzing"); this one checks what the daemon and the clients rely on between them:
//   bytes -> decode -> encode -> decode gives the same message, and encode's output is a
//   datagram decode accepts (within k_max_message_size) with the same request_id;
//   when the input does not decode, it is read as a message to build (FuzzedDataProvider):
//   encode -> decode gives it back, its strings and entry list cut at the protocol's limits
//   as the encoder documents.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "check.hpp"
#include "fields.hpp"
#include "pagerd/proto/codec.hpp"

using namespace pagerd;
using namespace pagerd::proto;
using pagerd::fuzz::same_body;

namespace {

// Decodes what encode() wrote for `msg`, which must succeed and keep type and request_id.
Message reencoded(const Message& msg, std::vector<std::uint8_t>& bytes)
{
    bytes = encode(msg);
    FUZZ_CHECK(bytes.size() >= k_header_size && bytes.size() <= k_max_message_size);
    const Type t = type_of(msg.body);
    auto back = decode(bytes, fds_expected(t));
    if (!back) std::fprintf(stderr, "decode of encode failed: %s\n", back.error().message.c_str());
    FUZZ_CHECK(back.ok());
    FUZZ_CHECK(back->request_id == msg.request_id);
    FUZZ_CHECK(type_of(back->body) == t);
    return std::move(back.value());
}

std::string text(FuzzedDataProvider& in, std::size_t limit)
{
    return in.ConsumeRandomLengthString(limit + 8);
}

RegionEntry entry(FuzzedDataProvider& in)
{
    RegionEntry e;
    e.client = in.ConsumeIntegral<std::uint64_t>();
    e.pid = in.ConsumeIntegral<std::uint32_t>();
    e.access = static_cast<Access>(in.ConsumeIntegral<std::uint8_t>());
    e.tracking = static_cast<Tracking>(in.ConsumeIntegral<std::uint8_t>());
    e.region_id = in.ConsumeIntegral<std::uint64_t>();
    e.length = in.ConsumeIntegral<std::uint64_t>();
    e.dirty_pages = in.ConsumeIntegral<std::uint64_t>();
    e.prefetch = static_cast<Prefetch>(in.ConsumeIntegral<std::uint8_t>());
    e.faults = in.ConsumeIntegral<std::uint64_t>();
    e.latency_p50_ns = in.ConsumeIntegral<std::uint64_t>();
    e.latency_p99_ns = in.ConsumeIntegral<std::uint64_t>();
    e.prefetch_pending = in.ConsumeIntegral<std::uint64_t>();
    for (auto& b : e.latency_histogram) b = in.ConsumeIntegral<std::uint32_t>();
    return e;
}

// The highest message type number: build() picks every type from 1 to it.
constexpr std::uint16_t last_type()
{
    std::uint16_t last = 0;
#define PAGERD_X(name, value, fds) last = value > last ? value : last;
    PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
    return last;
}

// A message of any type with any field values; `expected` is what decoding its encoding
// must give: strings cut to their limit, at most k_max_region_entries entries.
Message build(FuzzedDataProvider& in, Message& expected)
{
    Message m;
    m.request_id = in.ConsumeIntegral<std::uint32_t>();
    const auto type = static_cast<Type>(in.ConsumeIntegralInRange<std::uint16_t>(1, last_type()));
    auto cut = [](std::string s, std::size_t limit) { return s.size() > limit ? s.substr(0, limit) : s; };
    expected.request_id = m.request_id;
    switch (type) {
    case Type::HELLO: {
        Hello b{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(), text(in, k_max_name)};
        m.body = b;
        b.name = cut(b.name, k_max_name);
        expected.body = b;
        break;
    }
    case Type::WELCOME: {
        Welcome b{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint32_t>(),
                  in.ConsumeIntegral<std::uint32_t>(), in.ConsumeIntegral<std::uint64_t>(), text(in, k_max_text)};
        m.body = b;
        b.version = cut(b.version, k_max_text);
        expected.body = b;
        break;
    }
    case Type::REGISTER_UFFD:
        m.body = RegisterUffd{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint32_t>()};
        break;
    case Type::MAP:
        m.body = Map{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(),
                     in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint32_t>(),
                     static_cast<Prefetch>(in.ConsumeIntegral<std::uint8_t>())};
        break;
    case Type::MAPPED: m.body = Mapped{in.ConsumeIntegral<std::uint64_t>()}; break;
    case Type::CACHE_MAPPED: m.body = CacheMapped{in.ConsumeIntegral<std::uint64_t>()}; break;
    case Type::UNMAP: m.body = Unmap{in.ConsumeIntegral<std::uint64_t>()}; break;
    case Type::OK: m.body = Ok{}; break;
    case Type::STATUS: m.body = StatusRequest{}; break;
    case Type::STATUS_REPLY: {
        StatusReply b;
        for (std::uint64_t* f : {&b.uptime_ms, &b.regions, &b.mapped_bytes, &b.faults, &b.pages_installed,
                                 &b.bytes_read, &b.sigbus_faults, &b.latency_p50_ns, &b.latency_p99_ns,
                                 &b.latency_max_ns, &b.requester_regions, &b.pages_prefetched, &b.cache_budget,
                                 &b.cache_bytes, &b.cache_files, &b.cache_loads, &b.cache_hits,
                                 &b.cache_evictions, &b.cache_refaults, &b.cache_dirty_bytes,
                                 &b.cache_writebacks})
            *f = in.ConsumeIntegral<std::uint64_t>();
        for (std::uint32_t* f : {&b.workers, &b.clients, &b.user_mode_only_clients, &b.requester_flags})
            *f = in.ConsumeIntegral<std::uint32_t>();
        for (auto& n : b.latency_histogram) n = in.ConsumeIntegral<std::uint64_t>();
        b.version = text(in, k_max_text);
        m.body = b;
        b.version = cut(b.version, k_max_text);
        expected.body = b;
        break;
    }
    case Type::PING: m.body = Ping{in.ConsumeIntegral<std::uint64_t>()}; break;
    case Type::PONG: m.body = Pong{in.ConsumeIntegral<std::uint64_t>()}; break;
    case Type::ERROR: {
        ErrorReply b{static_cast<ErrorCode>(in.ConsumeIntegral<std::uint32_t>()), text(in, k_max_text)};
        m.body = b;
        b.text = cut(b.text, k_max_text);
        expected.body = b;
        break;
    }
    case Type::SHARED_MAP:
        m.body = MapShared{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(),
                           in.ConsumeIntegral<std::uint64_t>(),
                           static_cast<Tracking>(in.ConsumeIntegral<std::uint8_t>()),
                           static_cast<Prefetch>(in.ConsumeIntegral<std::uint8_t>())};
        break;
    case Type::FLUSH: m.body = Flush{in.ConsumeIntegral<std::uint64_t>()}; break;
    case Type::FLUSHED:
        m.body = Flushed{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>()};
        break;
    case Type::REGIONS: m.body = RegionsRequest{in.ConsumeIntegral<std::uint32_t>()}; break;
    case Type::REGIONS_REPLY: {
        RegionsReply b{in.ConsumeIntegral<std::uint32_t>(), in.ConsumeIntegral<std::uint32_t>(), {}};
        const auto n = in.ConsumeIntegralInRange<std::size_t>(0, k_max_region_entries + 3);
        for (std::size_t i = 0; i < n; ++i) b.entries.push_back(entry(in));
        m.body = b;
        if (b.entries.size() > k_max_region_entries) b.entries.resize(k_max_region_entries);
        expected.body = b;
        break;
    }
    case Type::PREFETCH:
        m.body = PrefetchRequest{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(),
                                 in.ConsumeIntegral<std::uint32_t>()};
        break;
    case Type::CACHES: m.body = CachesRequest{in.ConsumeIntegral<std::uint32_t>()}; break;
    case Type::CACHES_REPLY:
        m.body = CachesReply{in.ConsumeIntegral<std::uint32_t>(), in.ConsumeIntegral<std::uint32_t>(),
                             in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(),
                             in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(),
                             in.ConsumeIntegral<std::uint32_t>(), in.ConsumeIntegral<std::uint32_t>(),
                             in.ConsumeIntegral<std::uint64_t>()};
        break;
    case Type::MAP_STORE: {
        MapStore b{in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint64_t>(),
                   in.ConsumeIntegral<std::uint64_t>(), in.ConsumeIntegral<std::uint32_t>(),
                   static_cast<Prefetch>(in.ConsumeIntegral<std::uint8_t>()), text(in, k_max_uri)};
        m.body = b;
        b.uri = cut(b.uri, k_max_uri);
        expected.body = b;
        break;
    }
    case Type::STORES: m.body = StoresRequest{in.ConsumeIntegral<std::uint32_t>()}; break;
    case Type::STORES_REPLY: {
        StoresReply b;
        b.total = in.ConsumeIntegral<std::uint32_t>();
        b.index = in.ConsumeIntegral<std::uint32_t>();
        b.kind = text(in, k_max_name);
        b.uri = text(in, k_max_uri);
        b.size = in.ConsumeIntegral<std::uint64_t>();
        b.connections = in.ConsumeIntegral<std::uint32_t>();
        b.inflight = in.ConsumeIntegral<std::uint32_t>();
        for (std::uint64_t* f : {&b.reads, &b.read_bytes, &b.read_errors, &b.retries, &b.timeouts, &b.reconnects,
                                 &b.writes, &b.write_bytes, &b.write_errors, &b.read_latency_avg_ns,
                                 &b.read_latency_max_ns})
            *f = in.ConsumeIntegral<std::uint64_t>();
        m.body = b;
        b.kind = cut(b.kind, k_max_name);
        b.uri = cut(b.uri, k_max_uri);
        expected.body = b;
        break;
    }
    }
    if (expected.body.index() != m.body.index()) expected.body = m.body;  // nothing to cut
    return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::span<const std::uint8_t> bytes(data, size);
    const std::size_t fds = size >= 8 ? fds_expected(static_cast<Type>(data[6] | data[7] << 8)) : 0;
    std::vector<std::uint8_t> once, twice;
    if (auto first = decode(bytes, fds)) {
        // decode -> encode -> decode: the same message; encoding it again: the same bytes.
        const Message second = reencoded(*first, once);
        FUZZ_CHECK(same_body(first->body, second.body));
        (void)reencoded(second, twice);
        FUZZ_CHECK(once == twice);
        return 0;
    }
    FuzzedDataProvider in(data, size);
    Message expected;
    const Message built = build(in, expected);
    const Message back = reencoded(built, once);
    FUZZ_CHECK(same_body(back.body, expected.body));
    return 0;
}
