// The C API and the shared library's exported interface.
#include <catch2/catch.hpp>

#include <cstring>
#include <sstream>

#include "harness.hpp"

using namespace pagerd::test;

TEST_CASE("a C program maps a file through the C API of the shared library", "[capi]")
{
    TempDir dir;
    make_file(dir.file("data"), 200001, 17);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    make_file(dir.file("target"), 8192, 18);
    auto target = read_file(dir.file("target"));
    auto r = run_command({CAPI_CAT_BINARY, daemon.socket(), dir.file("data"), dir.file("target")});
    INFO(r.err);
    REQUIRE(exited_with(r.status, 0));
    REQUIRE(r.out == std::string(expect.begin(), expect.end()));
    std::memcpy(target.data() + 4096, "C API", 5);
    CHECK(read_file(dir.file("target")) == target);
    auto none = run_command({CAPI_CAT_BINARY, dir.file("no.sock"), dir.file("data")});
    CHECK(exited_with(none.status, 3));
    CHECK_THAT(none.err, Catch::Contains("is pagerd running"));
}

TEST_CASE("the shared library exports the C API, the UMap API and pagerd::libclient only", "[capi][abi]")
{
    auto r = run_command({"/bin/sh", "-c", std::string("nm -D --defined-only ") + CLIENT_SHARED_LIB});
    REQUIRE(exited_with(r.status, 0));
    std::istringstream lines(r.out);
    std::string line;
    int c_api = 0, cpp_api = 0, umap_api = 0;
    while (std::getline(lines, line)) {
        const std::string versioned = line.substr(line.rfind(' ') + 1);
        const std::string sym = versioned.substr(0, versioned.find('@'));
        INFO(sym);
        if (sym.rfind("pagerd_", 0) == 0) ++c_api;
        else if (sym.find("6pagerd9libclient") != std::string::npos) ++cpp_api;
        else if (sym == "umap" || sym == "uunmap" || sym.rfind("umap_", 0) == 0 || sym.rfind("umapcfg_", 0) == 0) ++umap_api;
        else CHECK(versioned == "PAGERD_CLIENT_1");  // the version node, nothing else
    }
    CHECK(c_api >= 10);
    CHECK(cpp_api >= 8);
    CHECK(umap_api >= 12);
}

// The prefetch part of the C API, through the static library linked here.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "pagerd/client.h"

TEST_CASE("the C API maps with each prefetch policy and prefetches ranges", "[capi][prefetch]")
{
    TempDir dir;
    const std::uint64_t size = 2 * 1024 * 1024;
    make_file(dir.file("data"), size, 19);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon({"--fault-block", "16384"});
    pagerd_conn* conn = nullptr;
    REQUIRE(pagerd_connect(daemon.socket().c_str(), &conn) == 0);
    const int fd = ::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);

    for (int access : {PAGERD_READ_ONLY, PAGERD_PRIVATE_WRITABLE})
        for (int policy : {PAGERD_PREFETCH_SEQUENTIAL, PAGERD_PREFETCH_NONE, PAGERD_PREFETCH_ALL}) {
            INFO("access " << access << ", prefetch " << policy);
            pagerd_region r{};
            const int rc = pagerd_map_fd_prefetch(conn, fd, 0, size, access, PAGERD_TRACK_AUTO, policy, &r);
            INFO(pagerd_last_error());
            REQUIRE(rc == 0);
            REQUIRE(r.size == size);
            REQUIRE(std::memcmp(r.addr, expect.data(), size) == 0);
            REQUIRE(pagerd_unmap(conn, &r) == 0);
        }

    // An unknown policy is refused before anything is mapped.
    for (int policy : {3, -1, 0x100}) {
        INFO("prefetch " << policy);
        pagerd_region r{};
        REQUIRE(pagerd_map_fd_prefetch(conn, fd, 0, size, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO, policy, &r) == -1);
        CHECK(pagerd_last_error_code() == EINVAL);
        CHECK(std::string(pagerd_last_error()).find("prefetch") != std::string::npos);
        CHECK(r.addr == nullptr);
    }

    // A waited prefetch loads the whole region: touching it afterwards faults nowhere.
    pagerd_region r{};
    REQUIRE(pagerd_map_fd_prefetch(conn, fd, 0, size, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO, PAGERD_PREFETCH_NONE, &r) == 0);
    pagerd_status before{};
    REQUIRE(pagerd_status_get(conn, &before) == 0);
    INFO(pagerd_last_error());
    REQUIRE(pagerd_prefetch(conn, r.addr, r.size, 1) == 0);
    std::vector<unsigned char> in_core(size / 4096);
    REQUIRE(::mincore(r.addr, size, in_core.data()) == 0);
    for (std::size_t i = 0; i < in_core.size(); ++i) {
        INFO("page " << i);
        REQUIRE((in_core[i] & 1) == 1);
    }
    REQUIRE(std::memcmp(r.addr, expect.data(), size) == 0);
    pagerd_status after{};
    REQUIRE(pagerd_status_get(conn, &after) == 0);
    CHECK(after.faults == before.faults);
    // Without wait: queued.
    REQUIRE(pagerd_prefetch(conn, r.addr, 65536, 0) == 0);

    // Bad ranges fail with a message: by the library (unaligned, empty), by the daemon
    // (outside every region).
    auto* base = static_cast<char*>(r.addr);
    REQUIRE(pagerd_prefetch(conn, base + 1, 4096, 1) == -1);
    CHECK(pagerd_last_error_code() == EINVAL);
    CHECK(std::string(pagerd_last_error()).size() > 0);
    REQUIRE(pagerd_prefetch(conn, base, 0, 1) == -1);
    CHECK(pagerd_last_error_code() == EINVAL);
    void* elsewhere = ::mmap(nullptr, 65536, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(elsewhere != MAP_FAILED);
    REQUIRE(pagerd_prefetch(conn, elsewhere, 65536, 1) == -1);
    ::munmap(elsewhere, 65536);
    CHECK(pagerd_last_error_code() == EINVAL);  // the daemon's NO_SUCH_REGION, as errno
    CHECK(pagerd_last_error_domain() == PAGERD_ERROR_DAEMON);
    CHECK(pagerd_last_daemon_error() == PAGERD_DAEMON_NO_SUCH_REGION);
    CHECK(std::string(pagerd_last_error()).find("region") != std::string::npos);
    REQUIRE(pagerd_prefetch(nullptr, base, 4096, 1) == -1);
    CHECK(pagerd_last_error_code() == EINVAL);
    CHECK(pagerd_ping(conn) == 0);
    REQUIRE(pagerd_unmap(conn, &r) == 0);
    ::close(fd);
    CHECK(pagerd_disconnect(conn) == 0);
}

// pagerd_map_store: regions of stores the daemon reaches itself, and each way a map of one
// fails, with its errno, domain and daemon code.
#include "libclient/fake_daemon.hpp"

namespace {

// The call returned -1 with this errno, domain and daemon code, and a message containing
// `text`.
void check_failed(const char* what, int rc, int err, int domain, int daemon_code, const std::string& text)
{
    INFO(what << ": " << pagerd_last_error());
    REQUIRE(rc == -1);
    CHECK(pagerd_last_error_code() == err);
    CHECK(pagerd_last_error_domain() == domain);
    CHECK(pagerd_last_daemon_error() == daemon_code);
    CHECK(std::string(pagerd_last_error()).find(text) != std::string::npos);
}

}  // namespace

TEST_CASE("the C API maps a store by URI, and reports each refusal", "[capi][store]")
{
    TempDir dir;
    // The daemon allows one export that nobody serves: its maps get as far as connecting.
    const std::string allowed = "nbd+unix:///x?socket=" + dir.file("nbd.sock");
    Daemon daemon({"--allow-store=" + allowed, "--store-timeout-ms=1000"});
    pagerd_conn* conn = nullptr;
    REQUIRE(pagerd_connect(daemon.socket().c_str(), &conn) == 0);
    const std::uint64_t size = 1 << 20;

    for (int access : {PAGERD_READ_ONLY, PAGERD_PRIVATE_WRITABLE})
        for (int policy : {PAGERD_PREFETCH_SEQUENTIAL, PAGERD_PREFETCH_NONE, PAGERD_PREFETCH_ALL}) {
            INFO("access " << access << ", prefetch " << policy);
            pagerd_region r{};
            const int rc = pagerd_map_store(conn, "zero:1M", 0, size - 65536, access, PAGERD_TRACK_AUTO, policy, &r);
            INFO(pagerd_last_error());
            REQUIRE(rc == 0);
            REQUIRE(r.size == size - 65536);
            REQUIRE(r.addr != nullptr);
            const std::vector<char> zeros(r.size, 0);
            CHECK(std::memcmp(r.addr, zeros.data(), r.size) == 0);
            if (access == PAGERD_PRIVATE_WRITABLE) {
                std::memcpy(r.addr, "C API", 5);
                CHECK(std::memcmp(r.addr, "C API", 5) == 0);
            }
            REQUIRE(pagerd_unmap(conn, &r) == 0);
        }

    pagerd_region r{};
    // The library's own checks: nothing reaches the daemon.
    check_failed("NULL uri", pagerd_map_store(conn, nullptr, 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                              PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "NULL");
    check_failed("NULL out", pagerd_map_store(conn, "zero:1M", 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                              PAGERD_PREFETCH_SEQUENTIAL, nullptr),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "NULL");
    check_failed("NULL conn", pagerd_map_store(nullptr, "zero:1M", 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                               PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "NULL");
    check_failed("empty uri", pagerd_map_store(conn, "", 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                               PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "URI");
    check_failed("zero length", pagerd_map_store(conn, "zero:1M", 0, 0, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                                 PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "zero");
    check_failed("unaligned offset", pagerd_map_store(conn, "zero:1M", 100, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                                      PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "page size");
    check_failed("unknown access", pagerd_map_store(conn, "zero:1M", 0, 4096, 42, PAGERD_TRACK_AUTO,
                                                    PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "access");
    check_failed("unknown tracking", pagerd_map_store(conn, "zero:1M", 0, 4096, PAGERD_SHARED, 7,
                                                      PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "tracking");
    check_failed("sigsegv tracking", pagerd_map_store(conn, "zero:1M", 0, 4096, PAGERD_SHARED, PAGERD_TRACK_SIGSEGV,
                                                      PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "uffd-wp");
    check_failed("unknown prefetch", pagerd_map_store(conn, "zero:1M", 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO, 3,
                                                      &r),
                 EINVAL, PAGERD_ERROR_SYSTEM, 0, "prefetch");
    // The daemon's refusals, with its code.
    check_failed("past the end", pagerd_map_store(conn, "zero:1M", 0, 2 * size, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                                  PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EINVAL, PAGERD_ERROR_DAEMON, PAGERD_DAEMON_PAST_EOF, "past the end");
    check_failed("unknown scheme", pagerd_map_store(conn, "ftp://host/x", 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                                    PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EBADF, PAGERD_ERROR_DAEMON, PAGERD_DAEMON_BAD_DESCRIPTOR, "not a store URI");
    // The URI reaches the daemon as given: its refusal names it.
    const std::string other = "nbd://127.0.0.1:1/not-allowed";
    check_failed("not allowed", pagerd_map_store(conn, other.c_str(), 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                                 PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EBADF, PAGERD_ERROR_DAEMON, PAGERD_DAEMON_BAD_DESCRIPTOR, "store not allowed");
    CHECK(std::string(pagerd_last_error()).find(other) != std::string::npos);
    // Allowed, but nothing listens: the daemon's attempt to connect fails.
    check_failed("no server", pagerd_map_store(conn, allowed.c_str(), 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                               PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EIO, PAGERD_ERROR_DAEMON, PAGERD_DAEMON_IO_ERROR, allowed);
    CHECK(r.addr == nullptr);
    // None of it left a region behind, and the connection serves on.
    pagerd_status s{};
    REQUIRE(pagerd_status_get(conn, &s) == 0);
    CHECK(s.regions == 0);
    CHECK(pagerd_ping(conn) == 0);
    CHECK(pagerd_disconnect(conn) == 0);
}

TEST_CASE("pagerd_map_store with a daemon that has no stores fails before asking it", "[capi][store]")
{
    TempDir dir;
    // The stand-in's WELCOME lacks STORES (and CACHE): the library refuses by itself.
    namespace proto = pagerd::proto;
    FakeDaemon fake(dir.file("files-only.sock"), [](const proto::Message& m) {
        return FakeDaemon::reply(m.request_id, proto::ErrorReply{proto::ErrorCode::UNKNOWN_TYPE, "unknown message type"});
    });
    REQUIRE(fake.listening());
    pagerd_conn* conn = nullptr;
    REQUIRE(pagerd_connect(dir.file("files-only.sock").c_str(), &conn) == 0);
    pagerd_region r{};
    check_failed("files-only daemon", pagerd_map_store(conn, "zero:1M", 0, 4096, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                                                       PAGERD_PREFETCH_SEQUENTIAL, &r),
                 EIO, PAGERD_ERROR_DAEMON, PAGERD_DAEMON_CAPABILITY, "STORES");
    CHECK(r.addr == nullptr);
    CHECK(fake.requests() == 0);
    CHECK(pagerd_disconnect(conn) == 0);
}
