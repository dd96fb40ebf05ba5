#include "pagerd/proto/wire.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "pagerd/proto/codec.hpp"

namespace pagerd::proto {

int send_message(int sock, const Message& msg, std::span<const int> fds, int flags)
{
    const auto bytes = encode(msg);
    iovec iov{const_cast<std::uint8_t*>(bytes.data()), bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * k_max_fds)]{};
    if (!fds.empty()) {
        if (fds.size() > k_max_fds) return EINVAL;
        mh.msg_control = control;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    for (;;) {
        const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
        if (n >= 0) return 0;
        if (errno != EINTR) return errno;
    }
}

Result<Received> receive(int sock, int flags)
{
    Received out;
    out.bytes.resize(k_max_message_size + 1);  // one spare byte detects oversize
    iovec iov{out.bytes.data(), out.bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    // Room for more descriptors than any message carries, so that a peer sending too many
    // is told so instead of having them silently dropped.
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * (k_max_fds + 6))]{};
    mh.msg_control = control;
    mh.msg_controllen = sizeof(control);
    ssize_t n;
    for (;;) {
        n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
        if (n >= 0) break;
        if (errno != EINTR) return Error::system(errno, std::strerror(errno));
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            out.fds.emplace_back(fd);
        }
    }
    out.truncated = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 ||
                    static_cast<std::size_t>(n) > k_max_message_size;
    out.closed = (n == 0 && out.fds.empty());
    out.bytes.resize(static_cast<std::size_t>(n));
    return out;
}

}  // namespace pagerd::proto
