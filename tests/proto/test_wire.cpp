// proto/wire.cpp over a real SOCK_SEQPACKET socketpair.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"

using namespace pagerd;
using namespace pagerd::proto;
using util::UniqueFd;

namespace {

struct SocketPair {
    UniqueFd a, b;
    SocketPair()
    {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
        a.reset(sv[0]);
        b.reset(sv[1]);
    }
};

UniqueFd make_file(const char* name)
{
    UniqueFd fd(::memfd_create(name, MFD_CLOEXEC));
    REQUIRE(fd);
    return fd;
}

// A regular file on disk, open O_RDWR and already unlinked: what SHARED_MAP sends first.
UniqueFd make_disk_file()
{
    std::string path = (std::filesystem::temp_directory_path() / "pagerd-test-wire-XXXXXX").string();
    UniqueFd fd(::mkostemp(path.data(), O_CLOEXEC));
    REQUIRE(fd);
    ::unlink(path.c_str());
    return fd;
}

int access_mode(int fd)
{
    const int f = ::fcntl(fd, F_GETFL);
    REQUIRE(f >= 0);
    return f & O_ACCMODE;
}

bool is_memfd(int fd) { return ::fcntl(fd, F_GET_SEALS) >= 0; }

bool same_file(int x, int y)
{
    struct stat sx {}, sy {};
    REQUIRE(::fstat(x, &sx) == 0);
    REQUIRE(::fstat(y, &sy) == 0);
    return sx.st_ino == sy.st_ino && sx.st_dev == sy.st_dev;
}

bool cloexec(int fd)
{
    const int f = ::fcntl(fd, F_GETFD);
    REQUIRE(f >= 0);
    return (f & FD_CLOEXEC) != 0;
}

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0 || errno != EBADF; }

Received receive_ok(int sock, int flags = 0)
{
    auto r = receive(sock, flags);
    if (!r.ok()) FAIL("receive: " << r.error().message);
    return std::move(r).value();
}

// Sends raw bytes with `nfds` copies of `fd` as SCM_RIGHTS, bypassing send_message's checks.
void send_raw(int sock, const std::vector<std::uint8_t>& bytes, int fd = -1, std::size_t nfds = 0)
{
    iovec iov{const_cast<std::uint8_t*>(bytes.data()), bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * nfds));  // new[]: aligned for cmsghdr
    if (nfds) {
        mh.msg_control = control.data();
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        for (std::size_t i = 0; i < nfds; ++i)
            std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
    }
    REQUIRE(::sendmsg(sock, &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

}  // namespace

TEST_CASE("wire: a message without descriptors round-trips", "[wire]")
{
    SocketPair sp;
    REQUIRE(send_message(sp.a.get(), Message{41, Ping{.nonce = 0xabcdef}}) == 0);
    const auto got = receive_ok(sp.b.get());
    CHECK_FALSE(got.truncated);
    CHECK_FALSE(got.closed);
    CHECK(got.fds.empty());
    const auto m = decode(got.bytes, got.fds.size());
    REQUIRE(m.ok());
    CHECK(m->request_id == 41);
    CHECK(std::get<Ping>(m->body).nonce == 0xabcdef);
}

TEST_CASE("wire: a message with one descriptor round-trips", "[wire]")
{
    SocketPair sp;
    const auto file = make_file("one");
    const std::array<int, 1> fds{file.get()};
    const Message sent{7, Map{.addr = 0x10000, .length = 0x1000}};
    REQUIRE(send_message(sp.a.get(), sent, fds) == 0);
    const auto got = receive_ok(sp.b.get());
    CHECK_FALSE(got.truncated);
    REQUIRE(got.fds.size() == 1);
    const int fd = got.fds[0].get();
    CHECK(fd >= 0);
    CHECK(fd != file.get());
    CHECK(same_file(fd, file.get()));
    CHECK(cloexec(fd));
    const auto m = decode(got.bytes, got.fds.size());
    REQUIRE(m.ok());
    CHECK(std::get<Map>(m->body).addr == 0x10000);
}

TEST_CASE("wire: SHARED_MAP carries its two descriptors in order", "[wire]")
{
    SocketPair sp;
    const auto file = make_disk_file();
    const auto memfd = make_file("region");
    REQUIRE(access_mode(file.get()) == O_RDWR);
    REQUIRE_FALSE(is_memfd(file.get()));
    REQUIRE(is_memfd(memfd.get()));
    const std::array<int, 2> fds{file.get(), memfd.get()};
    const Message sent{8, MapShared{.addr = 0x7f0000000000,
                                    .length = 0x200000,
                                    .file_offset = 0x1000,
                                    .tracking = Tracking::UFFD_WP}};
    REQUIRE(send_message(sp.a.get(), sent, fds) == 0);
    const auto got = receive_ok(sp.b.get());
    CHECK_FALSE(got.truncated);
    REQUIRE(got.fds.size() == 2);
    for (const auto& fd : got.fds) {
        CHECK(fd.get() >= 0);
        CHECK(cloexec(fd.get()));
    }
    // The order the daemon relies on: the file, then the memfd; and what it checks of
    // them (open O_RDWR; a memfd) survives the trip.
    CHECK(same_file(got.fds[0].get(), file.get()));
    CHECK(same_file(got.fds[1].get(), memfd.get()));
    CHECK_FALSE(same_file(got.fds[0].get(), got.fds[1].get()));
    CHECK(access_mode(got.fds[0].get()) == O_RDWR);
    CHECK_FALSE(is_memfd(got.fds[0].get()));
    CHECK(is_memfd(got.fds[1].get()));
    const auto m = decode(got.bytes, got.fds.size());
    REQUIRE(m.ok());
    CHECK(m->request_id == 8);
    const auto& body = std::get<MapShared>(m->body);
    CHECK(body.addr == 0x7f0000000000);
    CHECK(body.length == 0x200000);
    CHECK(body.file_offset == 0x1000);
    CHECK(body.tracking == Tracking::UFFD_WP);
}

TEST_CASE("wire: two descriptors on a type that carries fewer are BAD_DESCRIPTOR", "[wire]")
{
    SocketPair sp;
    const auto f0 = make_file("zero");
    const auto f1 = make_file("one");
    const std::array<int, 2> fds{f0.get(), f1.get()};
    REQUIRE(send_message(sp.a.get(), Message{8, Ping{}}, fds) == 0);
    const auto got = receive_ok(sp.b.get());
    CHECK_FALSE(got.truncated);
    REQUIRE(got.fds.size() == 2);
    CHECK(same_file(got.fds[0].get(), f0.get()));
    CHECK(same_file(got.fds[1].get(), f1.get()));
    // The codec says so, without a framing error.
    const auto m = decode(got.bytes, got.fds.size());
    REQUIRE_FALSE(m.ok());
    CHECK(m.error().code == static_cast<int>(ErrorCode::BAD_DESCRIPTOR));
    CHECK_FALSE(is_framing_error(m.error()));
}

TEST_CASE("wire: SHARED_MAP with one descriptor is BAD_DESCRIPTOR", "[wire]")
{
    SocketPair sp;
    const auto file = make_disk_file();
    const std::array<int, 1> fds{file.get()};
    REQUIRE(send_message(sp.a.get(), Message{9, MapShared{.length = 0x1000}}, fds) == 0);
    const auto got = receive_ok(sp.b.get());
    REQUIRE(got.fds.size() == 1);
    const auto m = decode(got.bytes, got.fds.size());
    REQUIRE_FALSE(m.ok());
    CHECK(m.error().code == static_cast<int>(ErrorCode::BAD_DESCRIPTOR));
    CHECK_FALSE(is_framing_error(m.error()));
}

TEST_CASE("wire: received descriptors close with the Received that holds them", "[wire]")
{
    SocketPair sp;
    const auto file = make_file("closes");
    const std::array<int, 1> fds{file.get()};
    REQUIRE(send_message(sp.a.get(), Message{1, RegisterUffd{}}, fds) == 0);
    int raw = -1;
    {
        const auto got = receive_ok(sp.b.get());
        REQUIRE(got.fds.size() == 1);
        raw = got.fds[0].get();
        CHECK(is_open(raw));
    }
    CHECK_FALSE(is_open(raw));
}

TEST_CASE("wire: send_message refuses more than k_max_fds descriptors", "[wire]")
{
    SocketPair sp;
    const auto file = make_file("many");
    const std::array<int, k_max_fds + 1> fds{file.get(), file.get(), file.get()};
    CHECK(send_message(sp.a.get(), Message{1, Ping{}}, fds) == EINVAL);
    const auto r = receive(sp.b.get(), MSG_DONTWAIT);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EAGAIN);
}

TEST_CASE("wire: an oversized datagram is reported truncated", "[wire]")
{
    SocketPair sp;
    SECTION("5000 bytes")
    {
        send_raw(sp.a.get(), std::vector<std::uint8_t>(5000, 0x5a));
        const auto got = receive_ok(sp.b.get());
        CHECK(got.truncated);
        CHECK_FALSE(got.closed);
        CHECK(got.bytes.size() <= k_max_message_size + 1);
    }
    SECTION("4097 bytes")
    {
        send_raw(sp.a.get(), std::vector<std::uint8_t>(k_max_message_size + 1, 0x5a));
        CHECK(receive_ok(sp.b.get()).truncated);
    }
    SECTION("4096 bytes is not truncated")
    {
        send_raw(sp.a.get(), std::vector<std::uint8_t>(k_max_message_size, 0x5a));
        const auto got = receive_ok(sp.b.get());
        CHECK_FALSE(got.truncated);
        CHECK(got.bytes.size() == k_max_message_size);
    }
}

TEST_CASE("wire: descriptors beyond the receiver's room are reported truncated", "[wire]")
{
    SocketPair sp;
    const auto file = make_file("flood");
    const auto ping = encode(Message{1, Ping{}});

    SECTION("3 descriptors fit: the codec rejects the count")
    {
        send_raw(sp.a.get(), ping, file.get(), 3);
        const auto got = receive_ok(sp.b.get());
        CHECK_FALSE(got.truncated);
        CHECK(got.fds.size() == 3);
        const auto m = decode(got.bytes, got.fds.size());
        REQUIRE_FALSE(m.ok());
        CHECK(m.error().code == static_cast<int>(ErrorCode::BAD_DESCRIPTOR));
    }
    SECTION("20 descriptors do not fit")
    {
        send_raw(sp.a.get(), ping, file.get(), 20);
        const auto got = receive_ok(sp.b.get());
        CHECK(got.truncated);
        CHECK(got.fds.size() < 20);
        for (const auto& fd : got.fds) {
            CHECK(same_file(fd.get(), file.get()));
            CHECK(cloexec(fd.get()));
        }
    }
}

TEST_CASE("wire: the peer's close is reported as closed", "[wire]")
{
    SocketPair sp;
    REQUIRE(send_message(sp.a.get(), Message{1, Ping{.nonce = 3}}) == 0);
    sp.a.reset();
    const auto first = receive_ok(sp.b.get());  // queued data comes first
    CHECK_FALSE(first.closed);
    const auto last = receive_ok(sp.b.get());
    CHECK(last.closed);
    CHECK(last.bytes.empty());
    CHECK(last.fds.empty());
}

TEST_CASE("wire: receive with MSG_DONTWAIT and nothing queued gives EAGAIN", "[wire]")
{
    SocketPair sp;
    const auto r = receive(sp.b.get(), MSG_DONTWAIT);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EAGAIN);
}

TEST_CASE("wire: sending to a closed peer gives EPIPE, not SIGPIPE", "[wire]")
{
    SocketPair sp;
    sp.b.reset();
    CHECK(send_message(sp.a.get(), Message{1, Ping{}}) == EPIPE);
}

TEST_CASE("wire: a peer that does not read makes MSG_DONTWAIT sends fail with EAGAIN", "[wire]")
{
    SocketPair sp;
    int rc = 0;
    int sent = 0;
    const Message big{1, ErrorReply{.text = std::string(k_max_text, 'e')}};
    while (sent < 1000000 && (rc = send_message(sp.a.get(), big, {}, MSG_DONTWAIT)) == 0) ++sent;
    CHECK(rc == EAGAIN);
    CHECK(sent > 0);
}
