// libFuzzer target: proto::decode, the one reader of datagrams (the daemon reads every
// client's requests with it, libclient and pagerctl the daemon's replies). The input is one
// datagram. decode must answer any bytes with a message or one of its three errors, read
// nothing outside them, and hand out only messages that keep proto/PROTOCOL.md's limits.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "check.hpp"
#include "pagerd/proto/codec.hpp"

using namespace pagerd;
using namespace pagerd::proto;

namespace {

std::uint32_t le(const std::uint8_t* p, int n)
{
    std::uint32_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::uint32_t{p[i]} << (8 * i);
    return v;
}

// What a decoded body may hold.
void check_body(const Body& body)
{
    std::visit(
        [](const auto& b) {
            using T = std::decay_t<decltype(b)>;
            if constexpr (std::is_same_v<T, Hello>) FUZZ_CHECK(b.name.size() <= k_max_name);
            if constexpr (std::is_same_v<T, Welcome> || std::is_same_v<T, StatusReply>)
                FUZZ_CHECK(b.version.size() <= k_max_text);
            if constexpr (std::is_same_v<T, ErrorReply>) {
                FUZZ_CHECK(b.text.size() <= k_max_text);
                (void)error_code_name(b.code);  // any u32: a client shows codes it does not know
            }
            if constexpr (std::is_same_v<T, RegionsReply>) FUZZ_CHECK(b.entries.size() <= k_max_region_entries);
            if constexpr (std::is_same_v<T, MapStore>) FUZZ_CHECK(b.uri.size() <= k_max_uri);
            if constexpr (std::is_same_v<T, StoresReply>) {
                FUZZ_CHECK(b.kind.size() <= k_max_name);
                FUZZ_CHECK(b.uri.size() <= k_max_uri);
            }
        },
        body);
}

void check_decode(std::span<const std::uint8_t> bytes, std::size_t fds)
{
    const auto got = decode(bytes, fds);
    if (!got) {
        const Error& e = got.error();
        const auto code = static_cast<ErrorCode>(e.code);
        FUZZ_CHECK(code == ErrorCode::MALFORMED || code == ErrorCode::UNKNOWN_TYPE ||
                   code == ErrorCode::BAD_DESCRIPTOR);
        FUZZ_CHECK(!e.message.empty());
        FUZZ_CHECK(is_framing_error(e) == (code == ErrorCode::MALFORMED));
        if (bytes.size() < k_header_size || bytes.size() > k_max_message_size)
            FUZZ_CHECK(code == ErrorCode::MALFORMED);
        return;
    }
    // Accepted: the header was right in every field, and the body is the type it named.
    const std::uint8_t* p = bytes.data();
    FUZZ_CHECK(bytes.size() >= k_header_size && bytes.size() <= k_max_message_size);
    FUZZ_CHECK(le(p, 4) == k_magic);
    FUZZ_CHECK(le(p + 4, 2) == k_version);
    FUZZ_CHECK(le(p + 8, 4) == bytes.size());
    const auto type = static_cast<Type>(le(p + 6, 2));
    FUZZ_CHECK(type_of(got->body) == type);
    FUZZ_CHECK(got->request_id == le(p + 12, 4));
    FUZZ_CHECK(fds == fds_expected(type));
    check_body(got->body);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::span<const std::uint8_t> bytes(data, size);
    // With the descriptors its type carries, and with a wrong count (checked last).
    const std::size_t want = size >= 8 ? fds_expected(static_cast<Type>(le(data + 6, 2))) : 0;
    check_decode(bytes, want);
    check_decode(bytes, want == k_max_fds ? 0 : want + 1);
    return 0;
}
