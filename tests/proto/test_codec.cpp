// proto/codec.cpp: round trips, and every way a datagram can be wrong.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <iterator>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include "pagerd/proto/codec.hpp"

using namespace pagerd;
using namespace pagerd::proto;

namespace {

using Bytes = std::vector<std::uint8_t>;

// messages.hpp defines no operator==: compare field by field through tuples of references.
auto fields(const Hello& m) { return std::tie(m.required_caps, m.optional_caps, m.name); }
auto fields(const Welcome& m)
{
    return std::tie(m.caps, m.page_size, m.max_regions, m.max_mapped_bytes, m.version);
}
auto fields(const RegisterUffd& m) { return std::tie(m.features, m.flags); }
auto fields(const Map& m) { return std::tie(m.addr, m.length, m.file_offset, m.flags, m.prefetch); }
auto fields(const Mapped& m) { return std::tie(m.region_id); }
auto fields(const CacheMapped& m) { return std::tie(m.region_id); }
auto fields(const Unmap& m) { return std::tie(m.region_id); }
auto fields(const Ok&) { return std::tie(); }
auto fields(const StatusRequest&) { return std::tie(); }
auto fields(const StatusReply& m)
{
    return std::tie(m.uptime_ms, m.workers, m.clients, m.regions, m.mapped_bytes, m.faults,
                    m.pages_installed, m.bytes_read, m.sigbus_faults, m.latency_p50_ns,
                    m.latency_p99_ns, m.latency_max_ns, m.user_mode_only_clients,
                    m.requester_flags, m.requester_regions, m.pages_prefetched, m.cache_budget,
                    m.cache_bytes, m.cache_files, m.cache_loads, m.cache_hits, m.cache_evictions,
                    m.cache_refaults, m.cache_dirty_bytes, m.cache_writebacks,
                    m.latency_histogram, m.version);
}
auto fields(const Ping& m) { return std::tie(m.nonce); }
auto fields(const Pong& m) { return std::tie(m.nonce); }
auto fields(const ErrorReply& m) { return std::tie(m.code, m.text); }
auto fields(const MapShared& m)
{
    return std::tie(m.addr, m.length, m.file_offset, m.tracking, m.prefetch);
}
auto fields(const Flush& m) { return std::tie(m.region_id); }
auto fields(const Flushed& m) { return std::tie(m.pages, m.bytes); }
auto fields(const RegionsRequest& m) { return std::tie(m.first); }
auto fields(const PrefetchRequest& m) { return std::tie(m.addr, m.length, m.flags); }
auto fields(const RegionEntry& e)
{
    return std::make_tuple(e.client, e.pid, e.access, e.tracking, e.region_id, e.length,
                           e.dirty_pages, e.prefetch, e.faults, e.latency_p50_ns,
                           e.latency_p99_ns, e.prefetch_pending, e.latency_histogram);
}
auto fields(const CachesRequest& m) { return std::tie(m.index); }
auto fields(const CachesReply& m)
{
    return std::tie(m.total, m.index, m.dev, m.ino, m.size, m.resident, m.clients, m.regions, m.dirty);
}
auto fields(const MapStore& m) { return std::tie(m.addr, m.length, m.offset, m.flags, m.prefetch, m.uri); }
auto fields(const StoresRequest& m) { return std::tie(m.index); }
auto fields(const StoresReply& m)
{
    return std::tie(m.total, m.index, m.kind, m.uri, m.size, m.connections, m.inflight, m.reads, m.read_bytes,
                    m.read_errors, m.retries, m.timeouts, m.reconnects, m.writes, m.write_bytes, m.write_errors,
                    m.read_latency_avg_ns, m.read_latency_max_ns);
}
auto fields(const RegionsReply& m)
{
    std::vector<decltype(fields(RegionEntry{}))> entries;
    for (const auto& e : m.entries) entries.push_back(fields(e));
    return std::make_tuple(m.total, m.first, std::move(entries));
}

bool same_body(const Body& a, const Body& b)
{
    if (a.index() != b.index()) return false;
    return std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            return fields(x) == fields(std::get<T>(b));
        },
        a);
}

// n bytes covering every byte value, NUL and high bytes included.
std::string pattern(std::size_t n)
{
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + 1) & 0xff);
    return s;
}

// A latency histogram whose buckets all differ, from each other and from those of
// another `seed`; every byte of a bucket is non-zero, the top one included.
template <class T>
std::array<T, k_latency_buckets> sample_histogram(std::uint64_t seed)
{
    std::array<T, k_latency_buckets> h{};
    for (std::size_t b = 0; b < h.size(); ++b) {
        T v = 0;
        for (std::size_t byte = 0; byte < sizeof(T); ++byte)
            v |= static_cast<T>(static_cast<T>(0x81 + ((seed * 16 + b) * 3 + byte) % 0x7f) << (8 * byte));
        h[b] = v;
    }
    return h;
}

// Entry i of a sample REGIONS_REPLY: every field non-zero (but prefetch, 0 being
// SEQUENTIAL) and different from entry to entry; access and tracking go through all 12
// combinations every 12 entries, prefetch through its 3 values.
RegionEntry sample_entry(std::uint64_t i)
{
    return RegionEntry{.client = 0x8000000000000000 | (i + 1),
                       .pid = static_cast<std::uint32_t>(0xfffffff0 - i),
                       .access = static_cast<Access>(i % 3),
                       .tracking = static_cast<Tracking>(i % 4),
                       .region_id = 0x0102030405060708 + i,
                       .length = (i + 1) << 32,
                       .dirty_pages = 0xfedcba9876543210 ^ i,
                       .prefetch = static_cast<Prefetch>((i + 2) % 3),
                       .faults = 0xa1a2a3a4a5a6a7a8 + i,
                       .latency_p50_ns = 0xb1b2b3b4b5b6b7b8 - i,
                       .latency_p99_ns = 0xc1c2c3c4c5c6c7c8 ^ (i << 8),
                       .prefetch_pending = 0xd1d2d3d4d5d6d7d8 + (i << 16),
                       .latency_histogram = sample_histogram<std::uint32_t>(i)};
}

std::vector<RegionEntry> sample_entries(std::size_t n)
{
    std::vector<RegionEntry> out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(sample_entry(i));
    return out;
}

// A STORES_REPLY with every number non-zero and different from the others.
StoresReply sample_stores_reply(std::string kind, std::string uri)
{
    return StoresReply{.total = 0xfffffff1,
                       .index = 0x80000002,
                       .kind = std::move(kind),
                       .uri = std::move(uri),
                       .size = 0x0000100000000000,
                       .connections = 0xf3f2f1f0,
                       .inflight = 0x80000004,
                       .reads = 0x1112131415161718,
                       .read_bytes = 0x2122232425262728,
                       .read_errors = 0x3132333435363738,
                       .retries = 0x4142434445464748,
                       .timeouts = 0x5152535455565758,
                       .reconnects = 0x6162636465666768,
                       .writes = 0x7172737475767778,
                       .write_bytes = 0x8182838485868788,
                       .write_errors = 0x9192939495969798,
                       .read_latency_avg_ns = 0xa1a2a3a4a5a6a7a8,
                       .read_latency_max_ns = 0xb1b2b3b4b5b6b7b8};
}

// One message of every type, every field non-zero and strings at their limit; and
// REGIONS_REPLY with 0, 1 and k_max_region_entries entries.
std::vector<Message> samples()
{
    return {
        {0x01020304, Hello{.required_caps = 0xfedcba9876543210,
                           .optional_caps = 0x8000000000000001,
                           .name = pattern(k_max_name)}},
        {0x80000001, Welcome{.caps = cap::FILE_STORE | cap::STATUS | (std::uint64_t{1} << 63),
                             .page_size = 4096,
                             .max_regions = 0xfffffffe,
                             .max_mapped_bytes = std::uint64_t{1} << 40,
                             .version = pattern(k_max_text)}},
        {3, RegisterUffd{.features = 0x1ffff, .flags = k_uffd_user_mode_only | 0x80000000}},
        {4, Map{.addr = 0x7f0123456000,
                .length = 0x40000000,
                .file_offset = 0xfffffffffffff000,
                .flags = k_map_private_writable,
                .prefetch = Prefetch::ALL}},
        {4, Map{.addr = 0x7f0123400000,
                .length = 0x200000,
                .file_offset = 0x1000,
                .flags = k_map_cache | k_map_shared,
                .prefetch = Prefetch::NONE}},
        {5, Mapped{.region_id = 0xffffffffffffffff}},
        {5, CacheMapped{.region_id = 0x8000000000000001}},
        {6, Unmap{.region_id = 0x0102030405060708}},
        {7, Ok{}},
        {8, StatusRequest{}},
        {9, StatusReply{.uptime_ms = 1,
                        .workers = 2,
                        .clients = 3,
                        .regions = 4,
                        .mapped_bytes = 0x0500000000000005,
                        .faults = 6,
                        .pages_installed = 7,
                        .bytes_read = 8,
                        .sigbus_faults = 9,
                        .latency_p50_ns = 10,
                        .latency_p99_ns = 11,
                        .latency_max_ns = 0xc00000000000000c,
                        .user_mode_only_clients = 13,
                        .requester_flags = 0xe000000e,
                        .requester_regions = 15,
                        .pages_prefetched = 0x1011121314151617,
                        .cache_budget = 0x1819000000000000,
                        .cache_bytes = 0x1a1b1c1d,
                        .cache_files = 0x1e,
                        .cache_loads = 0x1f20212223242526,
                        .cache_hits = 0x2728292a2b2c2d2e,
                        .cache_evictions = 0x2f30313233343536,
                        .cache_refaults = 0x3738393a3b3c3d3e,
                        .cache_dirty_bytes = 0x3f40414243444546,
                        .cache_writebacks = 0x4748494a4b4c4d4e,
                        .latency_histogram = sample_histogram<std::uint64_t>(99),
                        .version = pattern(k_max_text)}},
        {10, Ping{.nonce = 0x1122334455667788}},
        {0xffffffff, Pong{.nonce = 0x8877665544332211}},
        {12, ErrorReply{.code = ErrorCode::TIMEOUT, .text = pattern(k_max_text)}},
        {13, MapShared{.addr = 0x7ffff0000000,
                       .length = 0x0000100000000000,
                       .file_offset = 0x8000000000001000,
                       .tracking = Tracking::ASYNC,
                       .prefetch = Prefetch::NONE}},
        {14, Flush{.region_id = 0x8877665544332211}},
        {15, Flushed{.pages = 0xfffffffffffffffe, .bytes = 0x8000000000000001}},
        {16, RegionsRequest{.first = 0xfffffffe}},
        {17, RegionsReply{.total = 0xffffffff, .first = 0x80000001, .entries = {}}},
        {18, RegionsReply{.total = 1,
                          .first = 0,
                          .entries = {RegionEntry{.client = 0xffffffffffffffff,
                                                  .pid = 0xffffffff,
                                                  .access = Access::SHARED,
                                                  .tracking = Tracking::SEGV,
                                                  .region_id = 0x0102030405060708,
                                                  .length = 0x8000000000000000,
                                                  .dirty_pages = 0x1122334455667788,
                                                  .prefetch = Prefetch::ALL,
                                                  .faults = 0x99aabbccddeeff01,
                                                  .latency_p50_ns = 0x0203040506070809,
                                                  .latency_p99_ns = 0xf0e0d0c0b0a09080,
                                                  .prefetch_pending = 0x7f6f5f4f3f2f1f0f,
                                                  .latency_histogram =
                                                      sample_histogram<std::uint32_t>(50)}}}},
        {19, RegionsReply{.total = 0x7fffffff,
                          .first = 200,
                          .entries = sample_entries(k_max_region_entries)}},
        {20, PrefetchRequest{.addr = 0x7ffe12345000,
                             .length = 0x8000000000003000,
                             .flags = k_prefetch_wait | 0x80000000}},
        {21, CachesRequest{.index = 0xfffffffe}},
        {22, CachesReply{.total = 0x80000001,
                         .index = 7,
                         .dev = 0xfd01,
                         .ino = 0x123456789abcdef0,
                         .size = 1ull << 40,
                         .resident = 0x7ff000,
                         .clients = 0xfffffffe,
                         .regions = 0x80000001,
                         .dirty = 0x8000000000001000}},
        {23, MapStore{.addr = 0x7f0123456000,
                      .length = 0x0000100000000000,
                      .offset = 0xfffffffffffff000,
                      .flags = k_map_cache | k_map_shared | 0x80000000,
                      .prefetch = Prefetch::ALL,
                      .uri = pattern(k_max_uri)}},
        {24, StoresRequest{.index = 0xfffffffd}},
        {25, sample_stores_reply(pattern(k_max_name), pattern(k_max_uri))},
    };
}

// Every Tracking and Access value, in the order of constants.hpp.
const Tracking k_trackings[] = {Tracking::NONE, Tracking::UFFD_WP, Tracking::SEGV,
                                Tracking::ASYNC};
const Access k_accesses[] = {Access::READ_ONLY, Access::PRIVATE_WRITABLE, Access::SHARED};
const Prefetch k_prefetches[] = {Prefetch::SEQUENTIAL, Prefetch::NONE, Prefetch::ALL};

// Limit of the string a type carries as its last field, 0 if it carries none.
std::size_t string_limit(Type t)
{
    switch (t) {
    case Type::HELLO: return k_max_name;
    case Type::MAP_STORE: return k_max_uri;
    case Type::WELCOME:
    case Type::STATUS_REPLY:
    case Type::ERROR: return k_max_text;
    default: return 0;
    }
}

void put_u16(Bytes& b, std::size_t off, std::uint16_t v)
{
    b[off] = static_cast<std::uint8_t>(v);
    b[off + 1] = static_cast<std::uint8_t>(v >> 8);
}
void put_u32(Bytes& b, std::size_t off, std::uint32_t v)
{
    for (int i = 0; i < 4; ++i) b[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put_u64(Bytes& b, std::size_t off, std::uint64_t v)
{
    for (int i = 0; i < 8; ++i) b[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void fix_length(Bytes& b) { put_u32(b, 8, static_cast<std::uint32_t>(b.size())); }

Result<Message> decode_as_sent(const Bytes& b, const Message& m)
{
    return decode(b, fds_expected(type_of(m.body)));
}

bool fails_with(const Result<Message>& r, ErrorCode code)
{
    return !r.ok() && r.error().code == static_cast<int>(code);
}

}  // namespace

TEST_CASE("codec: the samples cover every message type", "[codec]")
{
    std::set<Type> seen;
    for (const auto& m : samples()) seen.insert(type_of(m.body));
    std::set<Type> all;
#define PAGERD_X(name, value, fds) all.insert(Type::name);
    PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
    CHECK(seen == all);
    CHECK(std::variant_size_v<Body> == all.size());

    std::set<std::size_t> entry_counts;
    for (const auto& m : samples())
        if (const auto* r = std::get_if<RegionsReply>(&m.body)) entry_counts.insert(r->entries.size());
    CHECK(entry_counts == std::set<std::size_t>{0, 1, k_max_region_entries});
}

TEST_CASE("codec: every message type round-trips with its fields intact", "[codec]")
{
    for (const auto& m : samples()) {
        INFO(type_name(type_of(m.body)));
        const Bytes b = encode(m);
        CHECK(b.size() <= k_max_message_size);
        const auto r = decode_as_sent(b, m);
        REQUIRE(r.ok());
        CHECK(r->request_id == m.request_id);
        CHECK(type_of(r->body) == type_of(m.body));
        CHECK(same_body(r->body, m.body));
        CHECK(encode(r.value()) == b);
    }
}

TEST_CASE("codec: default-constructed messages round-trip", "[codec]")
{
    for (const auto& s : samples()) {
        Message m{0, s.body};
        std::visit([](auto& b) { b = std::decay_t<decltype(b)>{}; }, m.body);
        INFO(type_name(type_of(m.body)));
        const auto r = decode_as_sent(encode(m), m);
        REQUIRE(r.ok());
        CHECK(same_body(r->body, m.body));
    }
}

TEST_CASE("codec: every truncation of every message is MALFORMED", "[codec]")
{
    for (const auto& m : samples()) {
        const Bytes whole = encode(m);
        INFO(type_name(type_of(m.body)));
        for (std::size_t len = 0; len < whole.size(); ++len) {
            INFO("prefix of " << len << " bytes");
            Bytes prefix(whole.begin(), whole.begin() + static_cast<long>(len));
            const auto r = decode_as_sent(prefix, m);
            CHECK(fails_with(r, ErrorCode::MALFORMED));
            if (len >= k_header_size) {
                // The same prefix with a consistent length field: the body reader must
                // notice on its own.
                fix_length(prefix);
                const auto r2 = decode_as_sent(prefix, m);
                CHECK(fails_with(r2, ErrorCode::MALFORMED));
                if (!r2.ok()) CHECK(is_framing_error(r2.error()));
            }
        }
    }
}

TEST_CASE("codec: one trailing byte is MALFORMED", "[codec]")
{
    for (const auto& m : samples()) {
        INFO(type_name(type_of(m.body)));
        Bytes b = encode(m);
        b.push_back(0);
        CHECK(fails_with(decode_as_sent(b, m), ErrorCode::MALFORMED));  // length mismatch
        fix_length(b);
        const auto r = decode_as_sent(b, m);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(r.error().message.find("trailing") != std::string::npos);
    }
}

TEST_CASE("codec: bad magic, version or length is MALFORMED", "[codec]")
{
    const Message ping{7, Ping{.nonce = 1}};
    const Bytes good = encode(ping);
    REQUIRE(decode(good, 0).ok());

    SECTION("magic")
    {
        for (std::size_t i = 0; i < 4; ++i) {
            Bytes b = good;
            b[i] ^= 0x20;
            CHECK(fails_with(decode(b, 0), ErrorCode::MALFORMED));
        }
    }
    SECTION("version")
    {
        for (std::uint16_t v : {std::uint16_t{0}, std::uint16_t{2}, std::uint16_t{0x0100}}) {
            Bytes b = good;
            put_u16(b, 4, v);
            const auto r = decode(b, 0);
            REQUIRE(fails_with(r, ErrorCode::MALFORMED));
            CHECK(is_framing_error(r.error()));
        }
    }
    SECTION("length")
    {
        const auto size = static_cast<std::uint32_t>(good.size());
        for (std::uint32_t len : {0u, 16u, size - 1, size + 1, 4096u, 0xffffffffu}) {
            Bytes b = good;
            put_u32(b, 8, len);
            CHECK(fails_with(decode(b, 0), ErrorCode::MALFORMED));
        }
    }
}

TEST_CASE("codec: an oversized datagram is MALFORMED", "[codec]")
{
    // A HELLO padded to 4097 bytes, with a header that agrees.
    Bytes b = encode(Message{1, Hello{}});
    b.resize(k_max_message_size + 1);
    fix_length(b);
    const auto r = decode(b, 0);
    REQUIRE(fails_with(r, ErrorCode::MALFORMED));
    CHECK(is_framing_error(r.error()));

    // Exactly the limit is not an oversize error (it fails on trailing bytes instead).
    b.resize(k_max_message_size);
    fix_length(b);
    const auto r2 = decode(b, 0);
    REQUIRE(fails_with(r2, ErrorCode::MALFORMED));
    CHECK(r2.error().message.find("trailing") != std::string::npos);
}

TEST_CASE("codec: an unknown type is UNKNOWN_TYPE and not a framing error", "[codec]")
{
    std::uint16_t last = 0;
#define PAGERD_X(name, value, fds) last = value > last ? value : last;
    PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
    REQUIRE(last == static_cast<std::uint16_t>(Type::STORES_REPLY));
    const auto next = static_cast<std::uint16_t>(last + 1);
    Bytes b = encode(Message{9, Ping{.nonce = 5}});
    for (std::uint16_t t : {std::uint16_t{0}, next, std::uint16_t{0xffff}}) {
        put_u16(b, 6, t);
        for (std::size_t fds : {0u, 1u, 2u}) {
            const auto r = decode(b, fds);
            REQUIRE(fails_with(r, ErrorCode::UNKNOWN_TYPE));
            CHECK_FALSE(is_framing_error(r.error()));
        }
    }
    // With only a header: the type is judged before the body.
    Bytes h(b.begin(), b.begin() + static_cast<long>(k_header_size));
    fix_length(h);
    CHECK(fails_with(decode(h, 0), ErrorCode::UNKNOWN_TYPE));
}

TEST_CASE("codec: a wrong number of descriptors is BAD_DESCRIPTOR", "[codec]")
{
    for (const auto& m : samples()) {
        const auto t = type_of(m.body);
        INFO(type_name(t));
        const Bytes b = encode(m);
        for (std::size_t fds = 0; fds <= k_max_fds + 1; ++fds) {
            const auto r = decode(b, fds);
            if (fds == fds_expected(t)) {
                CHECK(r.ok());
                continue;
            }
            REQUIRE(fails_with(r, ErrorCode::BAD_DESCRIPTOR));
            CHECK_FALSE(is_framing_error(r.error()));
        }
    }
    CHECK(fds_expected(Type::REGISTER_UFFD) == 1);
    CHECK(fds_expected(Type::MAP) == 1);
    CHECK(fds_expected(Type::SHARED_MAP) == 2);
    CHECK(fds_expected(Type::SHARED_MAP) == k_max_fds);
    CHECK(fds_expected(Type::MAP_STORE) == 0);
    CHECK(fds_expected(Type::STORES) == 0);
    CHECK(fds_expected(Type::STORES_REPLY) == 0);
}

TEST_CASE("codec: framing is judged before descriptors", "[codec]")
{
    Bytes b = encode(Message{1, Map{}});
    b.pop_back();
    fix_length(b);
    CHECK(fails_with(decode(b, 0), ErrorCode::MALFORMED));
    Bytes s = encode(Message{1, MapShared{}});
    s.push_back(0);
    fix_length(s);
    CHECK(fails_with(decode(s, 1), ErrorCode::MALFORMED));
}

TEST_CASE("codec: a string longer than its limit is MALFORMED", "[codec]")
{
    for (const auto& m : samples()) {
        const auto limit = string_limit(type_of(m.body));
        if (limit == 0) continue;
        INFO(type_name(type_of(m.body)));
        Bytes b = encode(m);  // the string, at its limit, is the last field
        const std::size_t count_at = b.size() - limit - 2;

        SECTION(std::string("limit + 1 bytes present: ") + type_name(type_of(m.body)))
        {
            put_u16(b, count_at, static_cast<std::uint16_t>(limit + 1));
            b.push_back('x');
            fix_length(b);
            const auto r = decode_as_sent(b, m);
            REQUIRE(fails_with(r, ErrorCode::MALFORMED));
            CHECK(is_framing_error(r.error()));
            CHECK(r.error().message.find("exceeds limit") != std::string::npos);
        }
        SECTION(std::string("count 0xffff: ") + type_name(type_of(m.body)))
        {
            put_u16(b, count_at, 0xffff);
            CHECK(fails_with(decode_as_sent(b, m), ErrorCode::MALFORMED));
        }
    }
}

TEST_CASE("codec: the encoder cuts a string to its limit", "[codec]")
{
    const auto r = decode(encode(Message{1, Hello{.name = std::string(k_max_name + 10, 'n')}}), 0);
    REQUIRE(r.ok());
    CHECK(std::get<Hello>(r->body).name == std::string(k_max_name, 'n'));
    const auto e =
        decode(encode(Message{1, ErrorReply{.text = std::string(k_max_text * 3, 't')}}), 0);
    REQUIRE(e.ok());
    CHECK(std::get<ErrorReply>(e->body).text.size() == k_max_text);
    const auto u = decode(encode(Message{1, MapStore{.uri = std::string(k_max_uri + 1, 'u')}}), 0);
    REQUIRE(u.ok());
    CHECK(std::get<MapStore>(u->body).uri == std::string(k_max_uri, 'u'));
    const auto s = decode(encode(Message{1, StoresReply{.kind = std::string(k_max_name + 1, 'k'),
                                                        .uri = std::string(k_max_uri + 9, 'u'),
                                                        .size = 5}}),
                          0);
    REQUIRE(s.ok());
    CHECK(std::get<StoresReply>(s->body).kind == std::string(k_max_name, 'k'));
    CHECK(std::get<StoresReply>(s->body).uri == std::string(k_max_uri, 'u'));
    CHECK(std::get<StoresReply>(s->body).size == 5);
}

TEST_CASE("codec: the header is little-endian, byte for byte", "[codec]")
{
    const Bytes b = encode(Message{0xa1b2c3d4, Ping{.nonce = 0x1122334455667788}});
    const Bytes expected = {
        0x50, 0x47, 0x52, 0x44,  // magic 0x44524750, "PGRD"
        0x01, 0x00,              // version 1
        0x0a, 0x00,              // type PING (10)
        0x18, 0x00, 0x00, 0x00,  // length 24
        0xd4, 0xc3, 0xb2, 0xa1,  // request_id
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // nonce
    };
    CHECK(b == expected);
    CHECK(std::string(b.begin(), b.begin() + 4) == "PGRD");
}

TEST_CASE("codec: MAP carries prefetch at offset 28", "[codec]")
{
    const Message m{2, Map{.addr = 0x1000,
                           .length = 0x2000,
                           .file_offset = 0x3000,
                           .flags = 1,
                           .prefetch = Prefetch::ALL}};
    Bytes b = encode(m);
    const Bytes body(b.begin() + static_cast<long>(k_header_size), b.end());
    const Bytes expected = {
        0x00, 0x10, 0, 0, 0, 0, 0, 0,  // addr
        0x00, 0x20, 0, 0, 0, 0, 0, 0,  // length
        0x00, 0x30, 0, 0, 0, 0, 0, 0,  // file_offset
        0x01, 0, 0, 0,                 // flags
        0x02, 0, 0, 0,                 // prefetch ALL
    };
    CHECK(body == expected);
    const auto r = decode(b, 1);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
    CHECK(std::get<Map>(r->body).prefetch == Prefetch::ALL);
    // The receiver reads the policy from offset 28, and only from there.
    put_u32(b, k_header_size + 28, 1);
    const auto none = decode(b, 1);
    REQUIRE(none.ok());
    CHECK(std::get<Map>(none->body).prefetch == Prefetch::NONE);
    CHECK(std::get<Map>(none->body).flags == 1);
    CHECK(std::get<Map>(none->body).file_offset == 0x3000);
}

TEST_CASE("codec: MAP carries every prefetch value, and no other aliases one", "[codec]")
{
    for (const Prefetch p : k_prefetches) {
        INFO("prefetch " << static_cast<unsigned>(p));
        const Message m{1, Map{.addr = 0x1000, .length = 0x1000, .prefetch = p}};
        const Bytes b = encode(m);
        CHECK(b[k_header_size + 28] == static_cast<std::uint8_t>(p));
        const auto r = decode(b, 1);
        REQUIRE(r.ok());
        CHECK(std::get<Map>(r->body).prefetch == p);
        CHECK(same_body(r->body, m.body));
    }
    // The field is a u32 on the wire and one byte in Prefetch: values that do not fit
    // must decode to something the session rejects, never to a valid policy.
    Bytes b = encode(Message{1, Map{}});
    for (std::uint32_t v : {3u, 0xffu, 0x100u, 0x101u, 0x102u, 0x80000001u, 0xffffffffu}) {
        INFO("prefetch on the wire " << v);
        put_u32(b, k_header_size + 28, v);
        const auto r = decode(b, 1);
        REQUIRE(r.ok());
        const Prefetch got = std::get<Map>(r->body).prefetch;
        for (const Prefetch valid : k_prefetches) CHECK(got != valid);
        if (v <= 0xff) CHECK(static_cast<std::uint32_t>(got) == v);
    }
}

TEST_CASE("codec: ERROR carries codes this side does not know", "[codec]")
{
    const Message m{3, ErrorReply{.code = static_cast<ErrorCode>(999), .text = "future"}};
    const auto r = decode(encode(m), 0);
    REQUIRE(r.ok());
    CHECK(static_cast<std::uint32_t>(std::get<ErrorReply>(r->body).code) == 999);
    CHECK(std::string(error_code_name(static_cast<ErrorCode>(999))) == "?");
}

TEST_CASE("codec: only MALFORMED is a framing error", "[codec]")
{
#define PAGERD_X(name, value)                                                          \
    CHECK(is_framing_error(Error::protocol(ErrorCode::name, "")) == (ErrorCode::name == ErrorCode::MALFORMED));
    PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X
}

TEST_CASE("codec: SHARED_MAP carries prefetch at offset 28", "[codec]")
{
    const Message m{2, MapShared{.addr = 0x1000,
                                 .length = 0x2000,
                                 .file_offset = 0x3000,
                                 .tracking = Tracking::SEGV,
                                 .prefetch = Prefetch::NONE}};
    Bytes b = encode(m);
    const Bytes body(b.begin() + static_cast<long>(k_header_size), b.end());
    const Bytes expected = {
        0x00, 0x10, 0, 0, 0, 0, 0, 0,  // addr
        0x00, 0x20, 0, 0, 0, 0, 0, 0,  // length
        0x00, 0x30, 0, 0, 0, 0, 0, 0,  // file_offset
        0x02, 0, 0, 0,                 // tracking SEGV
        0x01, 0, 0, 0,                 // prefetch NONE
    };
    CHECK(body == expected);
    const auto r = decode(b, 2);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
    CHECK(std::get<MapShared>(r->body).prefetch == Prefetch::NONE);
    // The receiver reads the policy from offset 28, and only from there.
    put_u32(b, k_header_size + 28, 2);
    const auto all = decode(b, 2);
    REQUIRE(all.ok());
    CHECK(std::get<MapShared>(all->body).prefetch == Prefetch::ALL);
    CHECK(std::get<MapShared>(all->body).tracking == Tracking::SEGV);
}

TEST_CASE("codec: SHARED_MAP carries every prefetch value, and no other aliases one", "[codec]")
{
    for (const Prefetch p : k_prefetches) {
        INFO("prefetch " << static_cast<unsigned>(p));
        const Message m{1, MapShared{.addr = 0x1000, .length = 0x1000, .prefetch = p}};
        const Bytes b = encode(m);
        CHECK(b[k_header_size + 28] == static_cast<std::uint8_t>(p));
        const auto r = decode(b, 2);
        REQUIRE(r.ok());
        CHECK(std::get<MapShared>(r->body).prefetch == p);
        CHECK(std::get<MapShared>(r->body).tracking == Tracking::UFFD_WP);
    }
    Bytes b = encode(Message{1, MapShared{}});
    for (std::uint32_t v : {3u, 0xffu, 0x100u, 0x101u, 0x102u, 0x80000001u, 0xffffffffu}) {
        INFO("prefetch on the wire " << v);
        put_u32(b, k_header_size + 28, v);
        const auto r = decode(b, 2);
        REQUIRE(r.ok());
        const Prefetch got = std::get<MapShared>(r->body).prefetch;
        for (const Prefetch valid : k_prefetches) CHECK(got != valid);
        if (v <= 0xff) CHECK(static_cast<std::uint32_t>(got) == v);
        // The tracking next to it is not disturbed.
        CHECK(std::get<MapShared>(r->body).tracking == Tracking::UFFD_WP);
    }
}

TEST_CASE("codec: PREFETCH is laid out byte for byte and the receiver ignores reserved", "[codec]")
{
    const Message m{6, PrefetchRequest{.addr = 0x1112131415161718,
                                       .length = 0x2122232425262728,
                                       .flags = k_prefetch_wait}};
    Bytes b = encode(m);
    const Bytes expected_header = {
        0x50, 0x47, 0x52, 0x44,  // magic
        0x01, 0x00,              // version 1
        0x12, 0x00,              // type PREFETCH (18)
        0x28, 0x00, 0x00, 0x00,  // length 16 + 24
        0x06, 0x00, 0x00, 0x00,  // request_id
    };
    CHECK(Bytes(b.begin(), b.begin() + static_cast<long>(k_header_size)) == expected_header);
    const Bytes body(b.begin() + static_cast<long>(k_header_size), b.end());
    const Bytes expected = {
        0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,  // addr
        0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21,  // length
        0x01, 0x00, 0x00, 0x00,                          // flags WAIT
        0x00, 0x00, 0x00, 0x00,                          // reserved
    };
    CHECK(body == expected);
    CHECK(k_prefetch_wait == 1u);
    CHECK(k_prefetch_known_flags == k_prefetch_wait);
    CHECK(fds_expected(Type::PREFETCH) == 0);
    put_u32(b, k_header_size + 20, 0xdeadbeef);
    const auto r = decode(b, 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
    // Unknown flag bits are carried for the session to refuse, not dropped.
    put_u32(b, k_header_size + 16, 0x80000003);
    const auto f = decode(b, 0);
    REQUIRE(f.ok());
    CHECK(std::get<PrefetchRequest>(f->body).flags == 0x80000003);
}

TEST_CASE("codec: STATUS_REPLY carries pages_prefetched, the cache figures and the histogram before the version",
          "[codec]")
{
    StatusReply s{.pages_prefetched = 0x0102030405060708,
                  .cache_budget = 0x1112131415161718,
                  .cache_bytes = 0x2122232425262728,
                  .cache_files = 0x3132333435363738,
                  .cache_loads = 0x4142434445464748,
                  .cache_hits = 0x5152535455565758,
                  .cache_evictions = 0x6162636465666768,
                  .cache_refaults = 0x7172737475767778,
                  .cache_dirty_bytes = 0x8182838485868788,
                  .cache_writebacks = 0x9192939495969798,
                  .latency_histogram = sample_histogram<std::uint64_t>(7),
                  .version = "v"};
    const Bytes b = encode(Message{1, s});
    REQUIRE(b.size() == k_header_size + 314 + 1);
    const auto u64_at = [&](std::size_t off) {
        std::uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v |= std::uint64_t{b[k_header_size + off + i]} << (8 * i);
        return v;
    };
    CHECK(u64_at(104) == s.pages_prefetched);
    CHECK(u64_at(112) == s.cache_budget);
    CHECK(u64_at(120) == s.cache_bytes);
    CHECK(u64_at(128) == s.cache_files);
    CHECK(u64_at(136) == s.cache_loads);
    CHECK(u64_at(144) == s.cache_hits);
    CHECK(u64_at(152) == s.cache_evictions);
    CHECK(u64_at(160) == s.cache_refaults);
    CHECK(u64_at(168) == s.cache_dirty_bytes);
    CHECK(u64_at(176) == s.cache_writebacks);
    for (std::size_t i = 0; i < k_latency_buckets; ++i) {
        INFO("bucket " << i);
        CHECK(u64_at(184 + 8 * i) == s.latency_histogram[i]);
    }
    CHECK(b[k_header_size + 312] == 1);  // version: count
    CHECK(b[k_header_size + 313] == 0);
    CHECK(b[k_header_size + 314] == 'v');
    for (std::size_t off = 0; off < 104; ++off) CHECK(b[k_header_size + off] == 0);
    const auto r = decode(b, 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, s));
}

TEST_CASE("codec: SHARED_MAP carries every tracking value, and no other aliases one", "[codec]")
{
    for (const Tracking t : k_trackings) {
        INFO("tracking " << static_cast<unsigned>(t));
        const Message m{1, MapShared{.addr = 0x1000, .length = 0x1000, .tracking = t}};
        const auto r = decode(encode(m), 2);
        REQUIRE(r.ok());
        CHECK(std::get<MapShared>(r->body).tracking == t);
    }
    // The field is a u32 on the wire and one byte in Tracking: values that do not fit
    // must decode to something the session rejects, never to a valid tracking.
    Bytes b = encode(Message{1, MapShared{}});
    for (std::uint32_t v : {4u, 0xffu, 0x100u, 0x101u, 0x102u, 0x103u, 0x80000001u, 0xffffffffu}) {
        INFO("tracking on the wire " << v);
        put_u32(b, k_header_size + 24, v);
        const auto r = decode(b, 2);
        REQUIRE(r.ok());
        const Tracking got = std::get<MapShared>(r->body).tracking;
        for (const Tracking valid : k_trackings) CHECK(got != valid);
        if (v <= 0xff) CHECK(static_cast<std::uint32_t>(got) == v);
    }
}

TEST_CASE("codec: REGIONS_REPLY is laid out byte for byte", "[codec]")
{
    RegionEntry first{.client = 0x1112131415161718,
                      .pid = 0x21222324,
                      .access = Access::SHARED,
                      .tracking = Tracking::ASYNC,
                      .region_id = 0x3132333435363738,
                      .length = 0x4142434445464748,
                      .dirty_pages = 0x5152535455565758,
                      .prefetch = Prefetch::ALL,
                      .faults = 0x6162636465666768,
                      .latency_p50_ns = 0x7172737475767778,
                      .latency_p99_ns = 0x8182838485868788,
                      .prefetch_pending = 0x9192939495969798};
    for (std::size_t i = 0; i < k_latency_buckets; ++i)
        first.latency_histogram[i] = 0xa0a1a2a0 + static_cast<std::uint32_t>(i << 24 | i);
    const Message m{5, RegionsReply{.total = 0x01020304,
                                    .first = 0x05060708,
                                    .entries = {first,
                                                RegionEntry{.client = 1,
                                                            .access = Access::PRIVATE_WRITABLE,
                                                            .tracking = Tracking::NONE,
                                                            .prefetch = Prefetch::NONE}}}};
    Bytes b = encode(m);
    const Bytes body(b.begin() + static_cast<long>(k_header_size), b.end());
    Bytes expected = {
        0x04, 0x03, 0x02, 0x01,                          // total
        0x08, 0x07, 0x06, 0x05,                          // first
        0x02, 0x00,                                      // count
        0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,  // [0] client
        0x24, 0x23, 0x22, 0x21,                          //     pid
        0x02,                                            //     access SHARED
        0x03,                                            //     tracking ASYNC
        0x02, 0x00,                                      //     prefetch ALL, high byte 0
        0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31,  //     region_id
        0x48, 0x47, 0x46, 0x45, 0x44, 0x43, 0x42, 0x41,  //     length
        0x58, 0x57, 0x56, 0x55, 0x54, 0x53, 0x52, 0x51,  //     dirty_pages
        0x68, 0x67, 0x66, 0x65, 0x64, 0x63, 0x62, 0x61,  //     faults
        0x78, 0x77, 0x76, 0x75, 0x74, 0x73, 0x72, 0x71,  //     latency_p50_ns
        0x88, 0x87, 0x86, 0x85, 0x84, 0x83, 0x82, 0x81,  //     latency_p99_ns
        0x98, 0x97, 0x96, 0x95, 0x94, 0x93, 0x92, 0x91,  //     prefetch_pending
    };
    for (std::uint8_t i = 0; i < k_latency_buckets; ++i) {  //     latency_histogram[i]
        const Bytes bucket = {static_cast<std::uint8_t>(0xa0 + i), 0xa2, 0xa1,
                              static_cast<std::uint8_t>(0xa0 + i)};
        expected.insert(expected.end(), bucket.begin(), bucket.end());
    }
    const Bytes second = {
        0x01, 0, 0, 0, 0, 0, 0, 0,  // [1] client
        0, 0, 0, 0,                 //     pid
        0x01,                       //     access PRIVATE_WRITABLE
        0x00,                       //     tracking NONE
        0x01, 0x00,                 //     prefetch NONE, high byte 0
        0, 0, 0, 0, 0, 0, 0, 0,     //     region_id
        0, 0, 0, 0, 0, 0, 0, 0,     //     length
        0, 0, 0, 0, 0, 0, 0, 0,     //     dirty_pages
        0, 0, 0, 0, 0, 0, 0, 0,     //     faults
        0, 0, 0, 0, 0, 0, 0, 0,     //     latency_p50_ns
        0, 0, 0, 0, 0, 0, 0, 0,     //     latency_p99_ns
        0, 0, 0, 0, 0, 0, 0, 0,     //     prefetch_pending
    };
    expected.insert(expected.end(), second.begin(), second.end());
    expected.insert(expected.end(), 4 * k_latency_buckets, 0);  //     latency_histogram
    REQUIRE(expected.size() == 10 + 2 * 136);
    CHECK(body == expected);
    const auto r = decode(b, 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
    // The receiver takes the policy from the low byte of the u16 at entry offset 14 and
    // ignores the high byte.
    put_u16(b, k_header_size + 10 + 14, 0xbe02);
    put_u16(b, k_header_size + 10 + 136 + 14, 0xff01);
    const auto h = decode(b, 0);
    REQUIRE(h.ok());
    CHECK(same_body(h->body, m.body));
    // The encoder never sends a high byte, whatever the entry holds.
    RegionsReply odd{.total = 1, .entries = {RegionEntry{.prefetch = static_cast<Prefetch>(0xff)}}};
    const Bytes o = encode(Message{1, odd});
    CHECK(o[k_header_size + 10 + 14] == 0xff);
    CHECK(o[k_header_size + 10 + 15] == 0x00);
}

TEST_CASE("codec: REGIONS_REPLY entries carry every access and tracking value", "[codec]")
{
    RegionsReply all;
    for (const Access a : k_accesses)
        for (const Tracking t : k_trackings) all.entries.push_back(RegionEntry{.access = a, .tracking = t});
    // Values this side does not know are carried, not refused: they are only ever added.
    all.entries.push_back(RegionEntry{.access = static_cast<Access>(0xfe),
                                      .tracking = static_cast<Tracking>(0xfd),
                                      .prefetch = static_cast<Prefetch>(0xfc)});
    all.total = static_cast<std::uint32_t>(all.entries.size());
    const Message m{1, all};
    const auto r = decode(encode(m), 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
    const auto& got = std::get<RegionsReply>(r->body).entries;
    REQUIRE(got.size() == std::size(k_accesses) * std::size(k_trackings) + 1);
    CHECK(static_cast<unsigned>(got.back().access) == 0xfe);
    CHECK(static_cast<unsigned>(got.back().tracking) == 0xfd);
    CHECK(static_cast<unsigned>(got.back().prefetch) == 0xfc);
}

TEST_CASE("codec: REGIONS_REPLY entries carry every prefetch value", "[codec]")
{
    RegionsReply all;
    for (const Prefetch p : k_prefetches)
        for (const Access a : k_accesses) all.entries.push_back(RegionEntry{.access = a, .prefetch = p});
    all.total = static_cast<std::uint32_t>(all.entries.size());
    const auto r = decode(encode(Message{1, all}), 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, all));
    const auto& got = std::get<RegionsReply>(r->body).entries;
    REQUIRE(got.size() == all.entries.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        INFO("entry " << i);
        CHECK(got[i].prefetch == k_prefetches[i / std::size(k_accesses)]);
        CHECK(got[i].access == k_accesses[i % std::size(k_accesses)]);
    }
}

TEST_CASE("codec: REGIONS_REPLY holds at most k_max_region_entries entries", "[codec]")
{
    constexpr std::size_t entry = 136, fixed = 10;
    // k_max_region_entries is the most that fit in one datagram.
    STATIC_REQUIRE(k_header_size + fixed + entry * k_max_region_entries <= k_max_message_size);
    STATIC_REQUIRE(k_header_size + fixed + entry * (k_max_region_entries + 1) > k_max_message_size);
    const Message full{3, RegionsReply{.total = 500, .first = 100,
                                       .entries = sample_entries(k_max_region_entries)}};
    const Bytes b = encode(full);
    REQUIRE(b.size() == k_header_size + fixed + entry * k_max_region_entries);
    CHECK(b.size() <= k_max_message_size);
    const std::size_t count_at = k_header_size + 8;
    const std::string one_too_many = std::to_string(k_max_region_entries + 1) + " entries";

    SECTION("k_max_region_entries + 1 entries, hand-encoded, are MALFORMED")
    {
        // They do not fit in a datagram: the decoder refuses the size before the count.
        Bytes more = b;
        const Bytes last(b.end() - static_cast<long>(entry), b.end());
        more.insert(more.end(), last.begin(), last.end());
        put_u16(more, count_at, static_cast<std::uint16_t>(k_max_region_entries + 1));
        fix_length(more);
        REQUIRE(more.size() > k_max_message_size);
        const auto r = decode(more, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(is_framing_error(r.error()));
    }
    SECTION("a count of k_max_region_entries + 1 over k_max_region_entries entries is MALFORMED")
    {
        // Judged on the count alone, before any entry is read.
        Bytes more = b;
        put_u16(more, count_at, static_cast<std::uint16_t>(k_max_region_entries + 1));
        const auto r = decode(more, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(is_framing_error(r.error()));
        CHECK(r.error().message.find(one_too_many) != std::string::npos);
    }
    SECTION("a count of k_max_region_entries + 1 over fewer entries is MALFORMED")
    {
        Bytes fewer(b.begin(), b.end() - static_cast<long>(entry));
        put_u16(fewer, count_at, static_cast<std::uint16_t>(k_max_region_entries + 1));
        fix_length(fewer);
        const auto r = decode(fewer, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(r.error().message.find(one_too_many) != std::string::npos);
    }
    SECTION("a count of 0xffff is MALFORMED")
    {
        Bytes more = b;
        put_u16(more, count_at, 0xffff);
        const auto r = decode(more, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(r.error().message.find("65535 entries") != std::string::npos);
    }
    SECTION("a count below the entries present leaves trailing bytes")
    {
        Bytes fewer = b;
        put_u16(fewer, count_at, static_cast<std::uint16_t>(k_max_region_entries - 1));
        const auto r = decode(fewer, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(r.error().message.find("trailing") != std::string::npos);
    }
    SECTION("the encoder cuts the list to k_max_region_entries")
    {
        RegionsReply big{.total = 1000, .first = 7, .entries = sample_entries(k_max_region_entries + 5)};
        const Bytes cut = encode(Message{4, big});
        CHECK(cut.size() == b.size());
        const auto r = decode(cut, 0);
        REQUIRE(r.ok());
        big.entries.resize(k_max_region_entries);
        CHECK(same_body(r->body, big));
    }
    SECTION("an entry's fields land 136 bytes apart")
    {
        Bytes edited = b;
        const std::size_t n = k_max_region_entries / 2;
        REQUIRE(n + 1 < k_max_region_entries);
        const std::size_t at = k_header_size + fixed + n * entry;  // entry n's start
        put_u64(edited, at + 16, 0x0123456789abcdef);              // region_id
        put_u64(edited, at + 40, 0x1032547698badcfe);              // faults
        put_u64(edited, at + 48, 0x2143658709badcfe);              // latency_p50_ns
        put_u64(edited, at + 56, 0x3254769810badcfe);              // latency_p99_ns
        put_u64(edited, at + 64, 0x4365879821badcfe);              // prefetch_pending
        put_u32(edited, at + 72, 0x5a5a0001);                      // latency_histogram[0]
        put_u32(edited, at + 72 + 4 * 15, 0x5a5a000f);             // latency_histogram[15]
        put_u16(edited, at + 14, 0x0001);                          // prefetch NONE
        const auto r = decode(edited, 0);
        REQUIRE(r.ok());
        const auto& entries = std::get<RegionsReply>(r->body).entries;
        RegionEntry want = sample_entry(n);
        want.region_id = 0x0123456789abcdef;
        want.faults = 0x1032547698badcfe;
        want.latency_p50_ns = 0x2143658709badcfe;
        want.latency_p99_ns = 0x3254769810badcfe;
        want.prefetch_pending = 0x4365879821badcfe;
        want.latency_histogram[0] = 0x5a5a0001;
        want.latency_histogram[15] = 0x5a5a000f;
        want.prefetch = Prefetch::NONE;
        CHECK(fields(entries[n]) == fields(want));
        CHECK(fields(entries[n - 1]) == fields(sample_entry(n - 1)));
        CHECK(fields(entries[n + 1]) == fields(sample_entry(n + 1)));
    }
}

TEST_CASE("codec: latency_bucket() at the edges of its buckets", "[codec]")
{
    STATIC_REQUIRE(k_latency_buckets == 16);
    CHECK(latency_bucket(0) == 0);
    CHECK(latency_bucket(1) == 0);
    CHECK(latency_bucket(999) == 0);
    CHECK(latency_bucket(1000) == 0);
    CHECK(latency_bucket(1999) == 0);
    CHECK(latency_bucket(2000) == 1);
    CHECK(latency_bucket(3999) == 1);
    CHECK(latency_bucket(4000) == 2);
    CHECK(latency_bucket(32000) == 5);  // PROTOCOL.md: bucket 5 is 32-64 us
    CHECK(latency_bucket(63999) == 5);
    // Bucket i (1..14) is [2^i, 2^(i+1)) us, both edges of each.
    for (unsigned i = 1; i <= 14; ++i) {
        INFO("bucket " << i);
        const std::uint64_t lo = (std::uint64_t{1} << i) * 1000;
        CHECK(latency_bucket(lo - 1) == i - 1);
        CHECK(latency_bucket(lo) == i);
        CHECK(latency_bucket(2 * lo - 1) == i);
    }
    CHECK(latency_bucket(32767999) == 14);
    CHECK(latency_bucket(32768000) == 15);  // 32768 us
    CHECK(latency_bucket(65536000) == 15);
    CHECK(latency_bucket(3600ull * 1000 * 1000 * 1000) == 15);
    CHECK(latency_bucket(~std::uint64_t{0}) == 15);
    // Never past the last bucket, and never going down as the time grows.
    unsigned prev = 0;
    for (std::uint64_t ns = 1; ns < (std::uint64_t{1} << 62); ns = ns * 3 / 2 + 1) {
        const unsigned b = latency_bucket(ns);
        CHECK(b < k_latency_buckets);
        CHECK(b >= prev);
        prev = b;
    }
}

TEST_CASE("codec: MAP_STORE is laid out byte for byte, its URI last", "[codec]")
{
    const Message m{8, MapStore{.addr = 0x1112131415161718,
                                .length = 0x2122232425262728,
                                .offset = 0x3132333435363738,
                                .flags = k_map_cache | k_map_private_writable,
                                .prefetch = Prefetch::NONE,
                                .uri = "zero:1G"}};
    Bytes b = encode(m);
    CHECK(b[6] == 22);  // type MAP_STORE
    CHECK(b[7] == 0);
    const Bytes body(b.begin() + static_cast<long>(k_header_size), b.end());
    const Bytes expected = {
        0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,  // addr
        0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21,  // length
        0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31,  // offset
        0x03, 0x00, 0x00, 0x00,                          // flags PRIVATE_WRITABLE | CACHE
        0x01, 0x00, 0x00, 0x00,                          // prefetch NONE
        0x07, 0x00,                                      // uri: count
        'z', 'e', 'r', 'o', ':', '1', 'G',               //      bytes
    };
    CHECK(body == expected);
    CHECK(fds_expected(Type::MAP_STORE) == 0);
    const auto r = decode(b, 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
    // A descriptor sent with it is the wrong count, not a framing error.
    const auto one = decode(b, 1);
    REQUIRE(fails_with(one, ErrorCode::BAD_DESCRIPTOR));
    CHECK_FALSE(is_framing_error(one.error()));
    // An empty URI decodes (the session refuses it), and every prefetch value on the wire
    // that does not fit decodes to something that is not a valid policy.
    CHECK(decode(encode(Message{1, MapStore{}}), 0).ok());
    for (std::uint32_t v : {3u, 0x100u, 0x101u, 0xffffffffu}) {
        INFO("prefetch on the wire " << v);
        put_u32(b, k_header_size + 28, v);
        const auto p = decode(b, 0);
        REQUIRE(p.ok());
        for (const Prefetch valid : k_prefetches) CHECK(std::get<MapStore>(p->body).prefetch != valid);
        CHECK(std::get<MapStore>(p->body).uri == "zero:1G");
    }
    // Unknown flag bits are carried for the session to refuse.
    put_u32(b, k_header_size + 24, 0x80000002);
    const auto f = decode(b, 0);
    REQUIRE(f.ok());
    CHECK(std::get<MapStore>(f->body).flags == 0x80000002);
}

TEST_CASE("codec: STORES is its index, STORES_REPLY has numbers after its two strings", "[codec]")
{
    const Bytes s = encode(Message{9, StoresRequest{.index = 0x01020304}});
    CHECK(Bytes(s.begin() + static_cast<long>(k_header_size), s.end()) == Bytes{0x04, 0x03, 0x02, 0x01});
    CHECK(s[6] == 23);

    const StoresReply reply = sample_stores_reply("nbd", "nbd://h/e");
    const Bytes b = encode(Message{9, reply});
    CHECK(b[6] == 24);
    const std::size_t k = 3, u = 9;
    REQUIRE(b.size() == k_header_size + 116 + k + u);
    const auto at = [&](std::size_t off, std::size_t n) {
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{b[k_header_size + off + i]} << (8 * i);
        return v;
    };
    CHECK(at(0, 4) == reply.total);
    CHECK(at(4, 4) == reply.index);
    CHECK(at(8, 2) == k);
    CHECK(std::string(b.begin() + static_cast<long>(k_header_size + 10),
                      b.begin() + static_cast<long>(k_header_size + 10 + k)) == "nbd");
    CHECK(at(10 + k, 2) == u);
    CHECK(std::string(b.begin() + static_cast<long>(k_header_size + 12 + k),
                      b.begin() + static_cast<long>(k_header_size + 12 + k + u)) == "nbd://h/e");
    const std::size_t n = 12 + k + u;  // the numbers after the strings
    CHECK(at(n + 0, 8) == reply.size);
    CHECK(at(n + 8, 4) == reply.connections);
    CHECK(at(n + 12, 4) == reply.inflight);
    const std::uint64_t counters[] = {reply.reads,      reply.read_bytes,  reply.read_errors,
                                      reply.retries,    reply.timeouts,    reply.reconnects,
                                      reply.writes,     reply.write_bytes, reply.write_errors,
                                      reply.read_latency_avg_ns, reply.read_latency_max_ns};
    for (std::size_t i = 0; i < std::size(counters); ++i) {
        INFO("counter " << i);
        CHECK(at(n + 16 + 8 * i, 8) == counters[i]);
    }
    CHECK(n + 16 + 8 * std::size(counters) == b.size() - k_header_size);
    const auto r = decode(b, 0);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, reply));

    // Past the end of the list: all 0 and empty but total and index.
    const auto e = decode(encode(Message{9, StoresReply{.total = 2, .index = 5}}), 0);
    REQUIRE(e.ok());
    CHECK(same_body(e->body, StoresReply{.total = 2, .index = 5}));
    CHECK(encode(Message{9, StoresReply{}}).size() == k_header_size + 116);
}

TEST_CASE("codec: STORES_REPLY strings over their limits are MALFORMED", "[codec]")
{
    // kind at body offset 8 (limit k_max_name), uri after it (limit k_max_uri).
    const StoresReply reply = sample_stores_reply(pattern(k_max_name), pattern(k_max_uri));
    const Bytes whole = encode(Message{3, reply});
    REQUIRE(decode(whole, 0).ok());
    const std::size_t kind_at = k_header_size + 8;
    const std::size_t uri_at = kind_at + 2 + k_max_name;

    SECTION("kind of k_max_name + 1 bytes")
    {
        Bytes b = whole;
        put_u16(b, kind_at, static_cast<std::uint16_t>(k_max_name + 1));
        b.insert(b.begin() + static_cast<long>(kind_at + 2), 'k');
        fix_length(b);
        const auto r = decode(b, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(is_framing_error(r.error()));
        CHECK(r.error().message.find("exceeds limit") != std::string::npos);
    }
    SECTION("uri of k_max_uri + 1 bytes")
    {
        Bytes b = whole;
        put_u16(b, uri_at, static_cast<std::uint16_t>(k_max_uri + 1));
        b.insert(b.begin() + static_cast<long>(uri_at + 2), 'u');
        fix_length(b);
        const auto r = decode(b, 0);
        REQUIRE(fails_with(r, ErrorCode::MALFORMED));
        CHECK(is_framing_error(r.error()));
        CHECK(r.error().message.find("exceeds limit") != std::string::npos);
    }
    SECTION("counts of 0xffff")
    {
        for (const std::size_t count_at : {kind_at, uri_at}) {
            INFO("count at " << count_at);
            Bytes b = whole;
            put_u16(b, count_at, 0xffff);
            CHECK(fails_with(decode(b, 0), ErrorCode::MALFORMED));
        }
    }
    SECTION("a kind within its limit that runs into the uri")
    {
        // The counts no longer agree with the bytes: whatever the reader makes of the
        // rest, it must not accept the datagram.
        Bytes b = whole;
        put_u16(b, kind_at, static_cast<std::uint16_t>(k_max_name - 1));
        CHECK(fails_with(decode(b, 0), ErrorCode::MALFORMED));
    }
}

TEST_CASE("codec: the store messages cut short are MALFORMED", "[codec]")
{
    // Short strings (the samples have them at their limits), so that every field's bytes
    // are cut at some length, inside each string included.
    const std::vector<Message> messages = {
        {1, MapStore{.addr = 0x1000, .length = 0x2000, .flags = k_map_cache, .uri = "nbd://host/export"}},
        {2, StoresRequest{.index = 1}},
        {3, sample_stores_reply("zero", "zero:4096")},
    };
    for (const auto& m : messages) {
        INFO(type_name(type_of(m.body)));
        const Bytes whole = encode(m);
        REQUIRE(decode(whole, 0).ok());
        for (std::size_t len = k_header_size; len < whole.size(); ++len) {
            INFO("body cut to " << len - k_header_size << " bytes");
            Bytes cut(whole.begin(), whole.begin() + static_cast<long>(len));
            fix_length(cut);
            const auto r = decode(cut, 0);
            REQUIRE(fails_with(r, ErrorCode::MALFORMED));
            CHECK(is_framing_error(r.error()));
        }
    }
}
