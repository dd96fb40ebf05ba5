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
