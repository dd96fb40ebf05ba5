// A client speaking the wire protocol by hand, for tests that play a hostile peer.
#pragma once
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"
#include "pagerd/util/uffd.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::test {

// A client speaking the wire protocol by hand.
class RawClient {
public:
    explicit RawClient(const std::string& path)
    {
        m_fd.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, path.c_str());
        REQUIRE(::connect(m_fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    int fd() const { return m_fd.get(); }
    void send_raw(const std::vector<std::uint8_t>& bytes, std::vector<int> fds = {})
    {
        iovec iov{const_cast<std::uint8_t*>(bytes.data()), bytes.size()};
        msghdr mh{};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)]{};
        if (!fds.empty()) {
            mh.msg_control = control;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
            cmsghdr* c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
            std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
        }
        REQUIRE(::sendmsg(m_fd.get(), &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
    }
    void send(proto::Body body, std::vector<int> fds = {})
    {
        send_raw(proto::encode(proto::Message{++m_id, std::move(body)}), std::move(fds));
    }
    // Next message from the daemon, or nothing when it closed the connection.
    std::optional<proto::Message> receive(std::chrono::milliseconds timeout = std::chrono::seconds(5))
    {
        pollfd p{m_fd.get(), POLLIN, 0};
        REQUIRE(::poll(&p, 1, static_cast<int>(timeout.count())) == 1);
        auto got = proto::receive(m_fd.get());
        // A daemon that closes the connection while our requests sit unread in it makes
        // the kernel report ECONNRESET once, ahead of the replies still queued to us; the
        // next reads return those replies, then the end of the stream.
        if (!got.ok() && got.error().is_errno(ECONNRESET)) got = proto::receive(m_fd.get());
        INFO("receive: " << (got.ok() ? std::string("ok") : got.error().message));
        REQUIRE(got.ok());
        if (got->closed) return std::nullopt;
        auto msg = proto::decode(got->bytes, got->fds.size());
        REQUIRE(msg.ok());
        return std::move(msg).value();
    }
    // Next message from the daemon with the descriptors it carried (CACHE_MAPPED: the
    // cache), or nothing when it closed the connection.
    struct WithFds {
        proto::Message msg;
        std::vector<util::UniqueFd> fds;
    };
    std::optional<WithFds> receive_with_fds(std::chrono::milliseconds timeout = std::chrono::seconds(5))
    {
        pollfd p{m_fd.get(), POLLIN, 0};
        REQUIRE(::poll(&p, 1, static_cast<int>(timeout.count())) == 1);
        auto got = proto::receive(m_fd.get());
        if (!got.ok() && got.error().is_errno(ECONNRESET)) got = proto::receive(m_fd.get());
        INFO("receive: " << (got.ok() ? std::string("ok") : got.error().message));
        REQUIRE(got.ok());
        if (got->closed) return std::nullopt;
        auto msg = proto::decode(got->bytes, got->fds.size());
        REQUIRE(msg.ok());
        return WithFds{std::move(msg).value(), std::move(got->fds)};
    }
    proto::ErrorReply expect_error(proto::ErrorCode code)
    {
        auto m = receive();
        REQUIRE(m.has_value());
        const auto* e = std::get_if<proto::ErrorReply>(&m->body);
        REQUIRE(e != nullptr);
        INFO("error text: " << e->text);
        CHECK(e->code == code);
        CHECK_FALSE(e->text.empty());
        return *e;
    }
    template <class T>
    T expect()
    {
        auto m = receive();
        REQUIRE(m.has_value());
        if (auto* e = std::get_if<proto::ErrorReply>(&m->body)) FAIL("unexpected error: " << e->text);
        const auto* t = std::get_if<T>(&m->body);
        REQUIRE(t != nullptr);
        return *t;
    }
    bool closed_by_daemon()
    {
        auto m = receive();
        return !m.has_value();
    }
    void hello()
    {
        send(proto::Hello{proto::cap::FILE_STORE, 0, "raw"});
        expect<proto::Welcome>();
    }
    std::uint32_t last_id() const { return m_id; }

private:
    util::UniqueFd m_fd;
    std::uint32_t m_id = 0;
};

// A userfaultfd with the given features (CACHE regions need MINOR_SHMEM, Shared ones WP).
inline util::UniqueFd make_uffd_with(std::uint64_t features)
{
    util::UniqueFd fd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    REQUIRE(fd);
    uffdio_api api{UFFD_API, features, 0};
    REQUIRE(::ioctl(fd.get(), UFFDIO_API, &api) == 0);
    return fd;
}

inline util::UniqueFd make_uffd() { return make_uffd_with(UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON); }

// Address space reserved as libclient reserves it before a MAP with CACHE: PROT_NONE,
// registered with no userfaultfd.
struct Reservation {
    explicit Reservation(std::uint64_t len) : length(len)
    {
        addr = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        REQUIRE(addr != MAP_FAILED);
    }
    ~Reservation() { ::munmap(addr, length); }
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    std::uint64_t start() const { return reinterpret_cast<std::uint64_t>(addr); }
    void* addr = nullptr;
    std::uint64_t length = 0;
};

// Anonymous memory registered with uffd, as libclient prepares it before MAP.
inline std::uint64_t registered_memory(int uffd, std::uint64_t len)
{
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(p);
    reg.range.len = len;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    REQUIRE(::ioctl(uffd, UFFDIO_REGISTER, &reg) == 0);
    return reg.range.start;
}

}  // namespace pagerd::test
