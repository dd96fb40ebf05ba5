// The one encoder and the one decoder of the wire format. decode() checks every length,
// count and limit before it reads a field.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "pagerd/proto/messages.hpp"
#include "pagerd/util/result.hpp"

namespace pagerd::proto {

std::vector<std::uint8_t> encode(const Message& msg);

// Decodes one whole datagram that arrived with `fd_count` descriptors. Errors carry a
// proto::ErrorCode as code (MALFORMED, UNKNOWN_TYPE, BAD_DESCRIPTOR) and a clear message.
Result<Message> decode(std::span<const std::uint8_t> bytes, std::size_t fd_count);

// True when a decode error means the peer broke framing (disconnect after replying),
// false when the connection may continue (unknown type, wrong descriptors).
bool is_framing_error(const Error& e);

}  // namespace pagerd::proto
