// SOCK_SEQPACKET transport: one message per datagram, descriptors via SCM_RIGHTS.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "pagerd/proto/messages.hpp"
#include "pagerd/util/result.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::proto {

struct Received {
    std::vector<std::uint8_t> bytes;   // at most k_max_message_size
    std::vector<util::UniqueFd> fds;   // received with MSG_CMSG_CLOEXEC
    bool truncated = false;            // datagram or descriptors did not fit: a violation
    bool closed = false;               // orderly end of stream
};

// Sends one encoded message with optional descriptors. MSG_NOSIGNAL; `flags` may add
// MSG_DONTWAIT. Returns 0 or an errno value.
int send_message(int sock, const Message& msg, std::span<const int> fds = {}, int flags = 0);

// Receives one datagram. Returns the datagram, or an errno value (EAGAIN included).
Result<Received> receive(int sock, int flags = 0);

}  // namespace pagerd::proto
