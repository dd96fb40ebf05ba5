// proto/codec.cpp: round trips, and every way a datagram can be wrong.
#include <catch2/catch.hpp>

#include <cstdint>
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
auto fields(const Map& m) { return std::tie(m.addr, m.length, m.file_offset, m.flags); }
auto fields(const Mapped& m) { return std::tie(m.region_id); }
auto fields(const Unmap& m) { return std::tie(m.region_id); }
auto fields(const Ok&) { return std::tie(); }
auto fields(const StatusRequest&) { return std::tie(); }
auto fields(const StatusReply& m)
{
    return std::tie(m.uptime_ms, m.workers, m.clients, m.regions, m.mapped_bytes, m.faults,
                    m.pages_installed, m.bytes_read, m.sigbus_faults, m.latency_p50_ns,
                    m.latency_p99_ns, m.latency_max_ns, m.user_mode_only_clients,
                    m.requester_flags, m.requester_regions, m.version);
}
auto fields(const Ping& m) { return std::tie(m.nonce); }
auto fields(const Pong& m) { return std::tie(m.nonce); }
auto fields(const ErrorReply& m) { return std::tie(m.code, m.text); }

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

// One message of every type, every field non-zero and strings at their limit.
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
                .flags = k_map_private_writable}},
        {5, Mapped{.region_id = 0xffffffffffffffff}},
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
                        .version = pattern(k_max_text)}},
        {10, Ping{.nonce = 0x1122334455667788}},
        {0xffffffff, Pong{.nonce = 0x8877665544332211}},
        {12, ErrorReply{.code = ErrorCode::TIMEOUT, .text = pattern(k_max_text)}},
    };
}

// Limit of the string a type carries as its last field, 0 if it carries none.
std::size_t string_limit(Type t)
{
    switch (t) {
    case Type::HELLO: return k_max_name;
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
    Bytes b = encode(Message{9, Ping{.nonce = 5}});
    for (std::uint16_t t : {std::uint16_t{0}, std::uint16_t{13}, std::uint16_t{0xffff}}) {
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
}

TEST_CASE("codec: framing is judged before descriptors", "[codec]")
{
    Bytes b = encode(Message{1, Map{}});
    b.pop_back();
    fix_length(b);
    CHECK(fails_with(decode(b, 0), ErrorCode::MALFORMED));
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

TEST_CASE("codec: MAP sends reserved as 0 and the receiver ignores it", "[codec]")
{
    const Message m{2, Map{.addr = 0x1000, .length = 0x2000, .file_offset = 0x3000, .flags = 1}};
    Bytes b = encode(m);
    const Bytes body(b.begin() + static_cast<long>(k_header_size), b.end());
    const Bytes expected = {
        0x00, 0x10, 0, 0, 0, 0, 0, 0,  // addr
        0x00, 0x20, 0, 0, 0, 0, 0, 0,  // length
        0x00, 0x30, 0, 0, 0, 0, 0, 0,  // file_offset
        0x01, 0, 0, 0,                 // flags
        0, 0, 0, 0,                    // reserved
    };
    CHECK(body == expected);
    put_u32(b, k_header_size + 28, 0xdeadbeef);
    const auto r = decode(b, 1);
    REQUIRE(r.ok());
    CHECK(same_body(r->body, m.body));
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
    CHECK(is_framing_error(Error{value, ""}) == (ErrorCode::name == ErrorCode::MALFORMED));
    PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X
}
