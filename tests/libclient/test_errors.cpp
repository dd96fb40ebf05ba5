// Every documented failure reaches the caller with its own domain and code: pagerd::Error
// in the C++ API (client.hpp "Errors"), errno + domain + daemon code in the C API (client.h
// "Errors"). Against the real daemon; a stand-in daemon (fake_daemon.hpp) only for the
// answers the real one never gives this library: an older daemon's UNKNOWN_TYPE, replies
// that make no sense, no reply.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "harness.hpp"
#include "libclient/fake_daemon.hpp"
#include "pagerd/client.h"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;
using libclient::Access;
using libclient::Connection;
using libclient::DaemonError;
using libclient::MapOptions;
using libclient::Region;

namespace {

const std::uint64_t k_page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
const std::uint64_t k_size = 16 * k_page;

std::string describe(const Error& e)
{
    return std::string(error_domain_name(e.domain)) + " " + std::to_string(e.code) + ": " + e.message;
}

// `what` failed with exactly this domain and code, and says why.
template <class T>
void check_error(const char* what, const Result<T>& r, ErrorDomain domain, int code)
{
    INFO(what);
    REQUIRE_FALSE(r.ok());
    INFO(describe(r.error()));
    CHECK(r.error().domain == domain);
    CHECK(r.error().code == code);
    CHECK_FALSE(r.error().message.empty());
}

// A C API call returned -1 and left this errno, domain and daemon code.
void check_c(const char* what, int rc, int err, int domain, int daemon_code)
{
    INFO(what << ": " << pagerd_last_error());
    REQUIRE(rc == -1);
    CHECK(pagerd_last_error_code() == err);
    CHECK(pagerd_last_error_domain() == domain);
    CHECK(pagerd_last_daemon_error() == daemon_code);
    CHECK(std::strlen(pagerd_last_error()) > 0);
}

// A socket file nobody listens on: connect(2) answers ECONNREFUSED.
void make_dead_socket(const std::string& path)
{
    const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    REQUIRE(s >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(s);
}

// Anonymous memory that is no region of any connection.
struct Elsewhere {
    void* addr = ::mmap(nullptr, k_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ~Elsewhere() { ::munmap(addr, k_size); }
};

MapOptions whole(std::uint64_t length = k_size, std::uint64_t offset = 0)
{
    return MapOptions{offset, length, Access::ReadOnly};
}

}  // namespace

TEST_CASE("Error: a code means nothing without its domain", "[errors]")
{
    const Error enoent = Error::system(ENOENT, "open");
    const Error unknown_type = Error::daemon(proto::ErrorCode::UNKNOWN_TYPE, "pagerd: unknown type");
    REQUIRE(enoent.code == unknown_type.code);  // both 2: the overlap the domain resolves
    CHECK(enoent.is_errno(ENOENT));
    CHECK_FALSE(unknown_type.is_errno(ENOENT));
    CHECK(unknown_type.is_daemon(DaemonError::UNKNOWN_TYPE));
    CHECK(unknown_type.is_daemon(proto::ErrorCode::UNKNOWN_TYPE));
    CHECK_FALSE(enoent.is_daemon());
    CHECK_FALSE(unknown_type.is_protocol());
    CHECK(libclient::to_errno(enoent) == ENOENT);
    CHECK(libclient::to_errno(unknown_type) == ENOSYS);

    const Error ebadf = Error::system(EBADF, "fstat");
    const Error no_region = Error::daemon(DaemonError::NO_SUCH_REGION, "pagerd: no such region");
    REQUIRE(ebadf.code == no_region.code);  // both 9
    CHECK(libclient::to_errno(ebadf) == EBADF);
    CHECK(libclient::to_errno(no_region) == EINVAL);

    const Error garbled = Error::protocol(proto::ErrorCode::MALFORMED, "bad reply from pagerd");
    CHECK(garbled.is_protocol(DaemonError::MALFORMED));
    CHECK_FALSE(garbled.is_daemon(DaemonError::MALFORMED));
    CHECK_FALSE(garbled.is_errno(EPERM));  // EPERM is 1 too
    CHECK(libclient::to_errno(garbled) == EPROTO);

    // The table of client.h and docs/umap.md, code by code; codes added later: EIO.
    const std::map<DaemonError, int> documented{
        {DaemonError::MALFORMED, EINVAL},  {DaemonError::UNKNOWN_TYPE, ENOSYS}, {DaemonError::BAD_DESCRIPTOR, EBADF},
        {DaemonError::NOT_READY, EIO},     {DaemonError::BAD_RANGE, EINVAL},    {DaemonError::OVERLAP, EINVAL},
        {DaemonError::PAST_EOF, EINVAL},   {DaemonError::LIMIT, ENOMEM},        {DaemonError::NO_SUCH_REGION, EINVAL},
        {DaemonError::CAPABILITY, EIO},    {DaemonError::INTERNAL, EIO},        {DaemonError::TIMEOUT, EIO},
        {DaemonError::IO_ERROR, EIO},
    };
    int codes = 0;
#define PAGERD_X(name, value)                                                                  \
    ++codes;                                                                                   \
    CHECK(libclient::to_errno(Error::daemon(proto::ErrorCode::name, "")) ==                    \
          documented.at(DaemonError::name));                                                   \
    CHECK(std::string(libclient::daemon_error_name(DaemonError::name)) == #name);
    PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X
    CHECK(codes == static_cast<int>(documented.size()));
    CHECK(libclient::to_errno(Error(ErrorDomain::Daemon, 99, "")) == EIO);
    CHECK(libclient::to_errno(Error::system(0, "")) == EIO);
    CHECK(std::string(libclient::daemon_error_name(static_cast<DaemonError>(99))) == "?");
}

TEST_CASE("each documented failure of the C++ API reaches the caller with its own domain and code",
          "[errors][daemon]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 71);
    make_dead_socket(dir.file("dead.sock"));

    // Daemon not running: no socket file, or nobody listening on it.
    check_error("no socket", Connection::connect({dir.file("none.sock")}), ErrorDomain::System, ENOENT);
    check_error("dead socket", Connection::connect({dir.file("dead.sock")}), ErrorDomain::System, ECONNREFUSED);

    Daemon daemon({"--max-regions-per-client", "1"});
    check_error("a capability the daemon lacks", Connection::connect({daemon.socket(), "picky", std::uint64_t{1} << 40}),
                ErrorDomain::Daemon, static_cast<int>(DaemonError::CAPABILITY));

    auto conn = daemon.connect();
    check_error("missing file", conn->map_file(dir.file("missing"), whole()), ErrorDomain::System, ENOENT);
    check_error("closed descriptor", conn->map_fd(-1, whole()), ErrorDomain::System, EBADF);
    check_error("unaligned length", conn->map_file(dir.file("data"), whole(k_size - 1)), ErrorDomain::System, EINVAL);
    const int write_only = ::open(dir.file("data").c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(write_only >= 0);
    check_error("write-only descriptor", conn->map_fd(write_only, whole()), ErrorDomain::Daemon,
                static_cast<int>(DaemonError::BAD_DESCRIPTOR));
    ::close(write_only);
    check_error("past the end of the file", conn->map_file(dir.file("data"), whole(k_size + k_page)),
                ErrorDomain::Daemon, static_cast<int>(DaemonError::PAST_EOF));
    check_error("offset at the end of the file", conn->map_file(dir.file("data"), whole(k_page, k_size)),
                ErrorDomain::Daemon, static_cast<int>(DaemonError::PAST_EOF));

    auto region = conn->map_file(dir.file("data"), whole());
    REQUIRE(region.ok());
    check_error("a region more than --max-regions-per-client", conn->map_file(dir.file("data"), whole()),
                ErrorDomain::Daemon, static_cast<int>(DaemonError::LIMIT));
    Elsewhere elsewhere;
    check_error("prefetch outside every region", conn->prefetch(elsewhere.addr, k_size, true), ErrorDomain::Daemon,
                static_cast<int>(DaemonError::NO_SUCH_REGION));
    // A region this connection does not have is refused by the library, from its own table:
    // the daemon is not asked.
    const Region unknown{region->id + 1000, elsewhere.addr, k_size, Access::ReadOnly};
    check_error("unmap of an unknown region", conn->unmap(unknown), ErrorDomain::System, EINVAL);
    check_error("flush of an unknown region", conn->flush(unknown), ErrorDomain::System, EINVAL);
    REQUIRE(conn->unmap(region.value()).ok());
    check_error("unmap twice", conn->unmap(region.value()), ErrorDomain::System, EINVAL);

    // The daemon gone: the connection is lost.
    daemon.kill_hard();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (conn->daemon_alive() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    REQUIRE_FALSE(conn->daemon_alive());
    check_error("ping after the daemon died", conn->ping(), ErrorDomain::System, ENOTCONN);
}

TEST_CASE("the daemon's client limit reaches the caller as Daemon LIMIT, and ENOMEM in C", "[errors][daemon]")
{
    Daemon daemon({"--max-clients", "1"});
    auto only = connect_within(daemon.socket());  // once the harness's own probe has left
    REQUIRE(only);
    auto extra = Connection::connect({daemon.socket()});
    check_error("a client more than --max-clients", extra, ErrorDomain::Daemon, static_cast<int>(DaemonError::LIMIT));
    CHECK_THAT(extra.error().message, Catch::Contains("too many clients"));
    pagerd_conn* c = nullptr;
    check_c("pagerd_connect beyond --max-clients", pagerd_connect(daemon.socket().c_str(), &c), ENOMEM,
            PAGERD_ERROR_DAEMON, PAGERD_DAEMON_LIMIT);
    CHECK(c == nullptr);
}

TEST_CASE("each documented failure of the C API sets its errno, domain and daemon code", "[errors][capi]")
{
    // Nothing failed yet on a new thread.
    int fresh[3] = {-1, -1, -1};
    std::thread([&] {
        fresh[0] = pagerd_last_error_code();
        fresh[1] = pagerd_last_error_domain();
        fresh[2] = pagerd_last_daemon_error();
    }).join();
    CHECK(fresh[0] == 0);
    CHECK(fresh[1] == PAGERD_ERROR_NONE);
    CHECK(fresh[2] == 0);

    TempDir dir;
    make_file(dir.file("data"), k_size, 72);
    make_dead_socket(dir.file("dead.sock"));
    pagerd_conn* conn = nullptr;
    check_c("no socket", pagerd_connect(dir.file("none.sock").c_str(), &conn), ENOENT, PAGERD_ERROR_SYSTEM, 0);
    check_c("dead socket", pagerd_connect(dir.file("dead.sock").c_str(), &conn), ECONNREFUSED, PAGERD_ERROR_SYSTEM, 0);
    check_c("NULL out", pagerd_connect(dir.file("none.sock").c_str(), nullptr), EINVAL, PAGERD_ERROR_SYSTEM, 0);

    Daemon daemon({"--max-regions-per-client", "1"});
    REQUIRE(pagerd_connect(daemon.socket().c_str(), &conn) == 0);
    pagerd_region r{};
    const std::string data = dir.file("data");
    check_c("missing file", pagerd_map_path(conn, dir.file("missing").c_str(), 0, k_size, PAGERD_READ_ONLY, &r),
            ENOENT, PAGERD_ERROR_SYSTEM, 0);
    check_c("closed descriptor", pagerd_map_fd(conn, -1, 0, k_size, PAGERD_READ_ONLY, &r), EBADF, PAGERD_ERROR_SYSTEM,
            0);
    check_c("unknown access", pagerd_map_path(conn, data.c_str(), 0, k_size, 7, &r), EINVAL, PAGERD_ERROR_SYSTEM, 0);
    const int write_only = ::open(data.c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(write_only >= 0);
    check_c("write-only descriptor", pagerd_map_fd(conn, write_only, 0, k_size, PAGERD_READ_ONLY, &r), EBADF,
            PAGERD_ERROR_DAEMON, PAGERD_DAEMON_BAD_DESCRIPTOR);
    ::close(write_only);
    check_c("past the end of the file", pagerd_map_path(conn, data.c_str(), 0, k_size + k_page, PAGERD_READ_ONLY, &r),
            EINVAL, PAGERD_ERROR_DAEMON, PAGERD_DAEMON_PAST_EOF);
    REQUIRE(pagerd_map_path(conn, data.c_str(), 0, k_size, PAGERD_READ_ONLY, &r) == 0);
    pagerd_region second{};
    check_c("a region more than --max-regions-per-client",
            pagerd_map_path(conn, data.c_str(), 0, k_size, PAGERD_READ_ONLY, &second), ENOMEM, PAGERD_ERROR_DAEMON,
            PAGERD_DAEMON_LIMIT);
    Elsewhere elsewhere;
    check_c("prefetch outside every region", pagerd_prefetch(conn, elsewhere.addr, k_size, 1), EINVAL,
            PAGERD_ERROR_DAEMON, PAGERD_DAEMON_NO_SUCH_REGION);
    // A success leaves the last failure as it was.
    REQUIRE(pagerd_ping(conn) == 0);
    CHECK(pagerd_last_error_code() == EINVAL);
    CHECK(pagerd_last_error_domain() == PAGERD_ERROR_DAEMON);
    CHECK(pagerd_last_daemon_error() == PAGERD_DAEMON_NO_SUCH_REGION);
    const pagerd_region unknown{r.id + 1000, elsewhere.addr, k_size};
    check_c("unmap of an unknown region", pagerd_unmap(conn, &unknown), EINVAL, PAGERD_ERROR_SYSTEM, 0);
    REQUIRE(pagerd_unmap(conn, &r) == 0);

    daemon.kill_hard();
    int rc = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    do {  // the first call may see the close itself (ECONNRESET); then the connection is lost
        rc = pagerd_ping(conn);
    } while (!(rc == -1 && pagerd_last_error_code() == ENOTCONN) && std::chrono::steady_clock::now() < deadline &&
             (std::this_thread::sleep_for(std::chrono::milliseconds(5)), true));
    check_c("ping after the daemon died", rc, ENOTCONN, PAGERD_ERROR_SYSTEM, 0);
    CHECK(pagerd_disconnect(conn) == 0);
}

TEST_CASE("ENOENT from the system and the daemon's code 2 (UNKNOWN_TYPE) are told apart", "[errors][fake]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 73);
    // A daemon older than the library: it knows HELLO and REGISTER_UFFD, not MAP.
    FakeDaemon old_daemon(dir.file("old.sock"), [](const proto::Message& m) {
        return FakeDaemon::reply(m.request_id, proto::ErrorReply{proto::ErrorCode::UNKNOWN_TYPE, "unknown message type"});
    });
    REQUIRE(old_daemon.listening());

    auto conn = Connection::connect({dir.file("old.sock")});
    REQUIRE(conn.ok());
    auto missing = conn.value()->map_file(dir.file("missing"), whole());
    CHECK(old_daemon.requests() == 0);  // refused by open(2), before the daemon is asked
    auto refused = conn.value()->map_file(dir.file("data"), whole());
    CHECK(old_daemon.requests() == 1);
    check_error("missing file", missing, ErrorDomain::System, ENOENT);
    check_error("MAP to a daemon that does not know it", refused, ErrorDomain::Daemon,
                static_cast<int>(DaemonError::UNKNOWN_TYPE));
    CHECK(missing.error().code == refused.error().code);  // the same number, 2
    CHECK(missing.error().is_errno(ENOENT));
    CHECK_FALSE(refused.error().is_errno(ENOENT));
    CHECK(refused.error().is_daemon(DaemonError::UNKNOWN_TYPE));
    CHECK_FALSE(missing.error().is_daemon(DaemonError::UNKNOWN_TYPE));

    // The C API: ENOENT stays ENOENT; the daemon's 2 becomes ENOSYS, and is there as itself.
    pagerd_conn* c = nullptr;
    REQUIRE(pagerd_connect(dir.file("old.sock").c_str(), &c) == 0);
    pagerd_region r{};
    check_c("missing file", pagerd_map_path(c, dir.file("missing").c_str(), 0, k_size, PAGERD_READ_ONLY, &r), ENOENT,
            PAGERD_ERROR_SYSTEM, 0);
    check_c("MAP to a daemon that does not know it",
            pagerd_map_path(c, dir.file("data").c_str(), 0, k_size, PAGERD_READ_ONLY, &r), ENOSYS, PAGERD_ERROR_DAEMON,
            PAGERD_DAEMON_UNKNOWN_TYPE);
    CHECK(pagerd_disconnect(c) == 0);
}

TEST_CASE("EBADF from the system and the daemon's code 9 (NO_SUCH_REGION) are told apart", "[errors][daemon]")
{
    Daemon daemon;
    auto conn = daemon.connect();
    Elsewhere elsewhere;
    auto bad_fd = conn->map_fd(-1, whole());
    auto outside = conn->prefetch(elsewhere.addr, k_size, true);
    check_error("closed descriptor", bad_fd, ErrorDomain::System, EBADF);
    check_error("prefetch outside every region", outside, ErrorDomain::Daemon,
                static_cast<int>(DaemonError::NO_SUCH_REGION));
    CHECK(bad_fd.error().code == outside.error().code);  // the same number, 9
    CHECK(bad_fd.error().is_errno(EBADF));
    CHECK_FALSE(outside.error().is_errno(EBADF));

    pagerd_conn* c = nullptr;
    REQUIRE(pagerd_connect(daemon.socket().c_str(), &c) == 0);
    pagerd_region r{};
    check_c("closed descriptor", pagerd_map_fd(c, -1, 0, k_size, PAGERD_READ_ONLY, &r), EBADF, PAGERD_ERROR_SYSTEM, 0);
    check_c("prefetch outside every region", pagerd_prefetch(c, elsewhere.addr, k_size, 1), EINVAL,
            PAGERD_ERROR_DAEMON, PAGERD_DAEMON_NO_SUCH_REGION);
    CHECK(pagerd_disconnect(c) == 0);
}

TEST_CASE("a reply that makes no sense is a Protocol error (EPROTO), no reply is ETIMEDOUT", "[errors][fake]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 74);
    FakeDaemon odd(dir.file("odd.sock"), [](const proto::Message& m) -> std::optional<std::vector<std::uint8_t>> {
        if (std::holds_alternative<proto::Ping>(m.body)) return FakeDaemon::reply(m.request_id, proto::Ok{});
        if (std::holds_alternative<proto::Map>(m.body)) return std::vector<std::uint8_t>(16, 0);  // no magic
        return std::nullopt;  // STATUS: never answered
    });
    REQUIRE(odd.listening());

    auto conn = Connection::connect({dir.file("odd.sock"), "test", 0, 300});
    REQUIRE(conn.ok());
    auto& c = *conn.value();
    check_error("PING answered with OK", c.ping(), ErrorDomain::Protocol, static_cast<int>(DaemonError::MALFORMED));
    check_error("MAP answered with bytes that do not decode", c.map_file(dir.file("data"), whole()),
                ErrorDomain::Protocol, static_cast<int>(DaemonError::MALFORMED));
    check_error("STATUS never answered", c.status(), ErrorDomain::System, ETIMEDOUT);

    pagerd_conn* cc = nullptr;
    REQUIRE(pagerd_connect(dir.file("odd.sock").c_str(), &cc) == 0);
    check_c("PING answered with OK", pagerd_ping(cc), EPROTO, PAGERD_ERROR_PROTOCOL, 0);
    pagerd_region r{};
    check_c("MAP answered with bytes that do not decode",
            pagerd_map_path(cc, dir.file("data").c_str(), 0, k_size, PAGERD_READ_ONLY, &r), EPROTO,
            PAGERD_ERROR_PROTOCOL, 0);
    CHECK(pagerd_disconnect(cc) == 0);
}
