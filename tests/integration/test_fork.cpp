// fork(): a child keeps its parent's regions and they keep working (capability FORK): the
// daemon takes the child's userfaultfd from UFFD_EVENT_FORK and serves the child's faults;
// the child's exit or exec frees what the daemon kept for it.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "harness.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;
using libclient::Access;
using libclient::Tracking;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_size = 4 << 20;

// 0 when [addr, addr + len) holds data[from, from + len).
int differs(const void* addr, const std::vector<std::uint8_t>& data, std::uint64_t from, std::uint64_t len)
{
    return std::memcmp(addr, data.data() + from, len) == 0 ? 0 : 1;
}

void touch(const void* addr, std::uint64_t len)
{
    const auto* p = static_cast<const volatile std::uint8_t*>(addr);
    for (std::uint64_t off = 0; off < len; off += k_page) (void)p[off];
}

}  // namespace

TEST_CASE("a forked child reads its parent's region, pages loaded before the fork and pages not, through the daemon",
          "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 901);
    const auto data = read_file(dir.file("data"));
    Daemon d;
    auto conn = d.connect();
    CHECK((conn->daemon_caps() & proto::cap::FORK) != 0);
    CHECK(conn->fork_inherits());  // root: CAP_SYS_PTRACE
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::ReadOnly, Tracking::Auto, nullptr,
                                               libclient::Prefetch::None});
    REQUIRE(r.ok());
    touch(r->addr, k_size / 2);  // the first half is loaded in the parent
    const auto before = d.status();
    const int st = run_child([&] { return differs(r->addr, data, 0, k_size); });
    CHECK(exited_with(st, 0));
    const auto after = d.status();
    INFO("faults before " << before.faults << ", after " << after.faults);
    CHECK(after.faults >= before.faults + 1);  // the child's second half came from the daemon
    // The child's exit frees its copy: one client (the test's), its region, no more.
    CHECK(d.wait_until([&](const auto& s) { return s.clients == before.clients && s.regions == before.regions; }));
    CHECK(d.wait_log("the forked child exited or exec'd"));
    CHECK(conn->unmap(r.value()).ok());
}

TEST_CASE("a forked child of a PrivateWritable region sees its parent's private writes and keeps its own", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 903);
    const auto data = read_file(dir.file("data"));
    Daemon d;
    auto conn = d.connect();
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::PrivateWritable});
    REQUIRE(r.ok());
    auto* p = static_cast<std::uint8_t*>(r->addr);
    std::memset(p, 0xAA, k_page);  // the parent's private page 0
    const int st = run_child([&] {
        if (p[0] != 0xAA || p[k_page - 1] != 0xAA) return 1;               // the parent's copy
        if (differs(p + 5 * k_page, data, 5 * k_page, k_page)) return 2;  // a page loaded now
        std::memset(p + 6 * k_page, 0xBB, k_page);                      // the child's own
        return p[6 * k_page] == 0xBB ? 0 : 3;
    });
    CHECK(exited_with(st, 0));
    CHECK(differs(p + 6 * k_page, data, 6 * k_page, k_page) == 0);  // not the child's write
    CHECK(p[0] == 0xAA);
    CHECK(read_file(dir.file("data")) == data);  // nothing reached the file
    CHECK(conn->unmap(r.value()).ok());
}

TEST_CASE("a forked child's Shared writes reach the file: through the parent's flush, and through its own", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 905);
    auto data = read_file(dir.file("data"));
    Daemon d;
    auto conn = d.connect();
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::Shared});
    REQUIRE(r.ok());
    REQUIRE(r->tracking == Tracking::UffdWp);  // in the daemon's page cache
    auto* p = static_cast<std::uint8_t*>(r->addr);
    p[0] = 0x11;  // written by the parent before the fork
    SECTION("the child writes and exits, the parent flushes")
    {
        const int st = run_child([&] {
            p[1] = 0x22;             // a page the parent wrote
            p[7 * k_page] = 0x33;    // one it never touched
            p[9 * k_page + 5] = 0x44;
            return 0;
        });
        CHECK(exited_with(st, 0));
        CHECK(p[1] == 0x22);  // the cache is shared: the parent sees them at once
        CHECK(p[7 * k_page] == 0x33);
        CHECK(conn->flush(r.value()).ok());
    }
    SECTION("the child flushes through the connection it inherited")
    {
        const int st = run_child([&] {
            p[1] = 0x22;
            p[7 * k_page] = 0x33;
            p[9 * k_page + 5] = 0x44;
            if (!conn->forked()) return 1;
            if (conn->ping().ok()) return 2;  // the parent's socket: not for the child
            auto f = conn->flush(r.value());
            return f.ok() ? 0 : 3;
        });
        CHECK(exited_with(st, 0));
        CHECK_FALSE(conn->forked());
        CHECK(conn->ping().ok());  // the parent's connection is untouched
    }
    data[0] = 0x11;
    data[1] = 0x22;
    data[7 * k_page] = 0x33;
    data[9 * k_page + 5] = 0x44;
    CHECK(read_file(dir.file("data")) == data);
    CHECK(conn->unmap(r.value()).ok());
    CHECK(read_file(dir.file("data")) == data);
}

TEST_CASE("fork then exec leaves nothing behind in the daemon", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 907);
    Daemon d;
    auto conn = d.connect();
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::ReadOnly});
    REQUIRE(r.ok());
    touch(r->addr, k_size);
    const auto before = d.status();
    const std::size_t fds = d.fd_count();
    for (int i = 0; i < 5; ++i) {
        const int st = run_child([] {
            ::execl("/bin/sleep", "sleep", "0.2", static_cast<char*>(nullptr));
            return 99;
        });
        CHECK(exited_with(st, 0));
    }
    CHECK(d.wait_until([&](const auto& s) { return s.clients == before.clients && s.regions == before.regions; }));
    CHECK(d.wait_fds_at_most(fds));
    CHECK(conn->unmap(r.value()).ok());
}

TEST_CASE("a grandchild reads the region too, and unmapping it in the child frees the child's copy", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 909);
    const auto data = read_file(dir.file("data"));
    Daemon d;
    auto conn = d.connect();
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::ReadOnly, Tracking::Auto, nullptr,
                                               libclient::Prefetch::None});
    REQUIRE(r.ok());
    const auto before = d.status();
    const int st = run_child([&] {
        const pid_t g = ::fork();
        if (g == 0) _exit(differs(r->addr, data, 0, k_size));
        int gs = 0;
        if (::waitpid(g, &gs, 0) != g || !WIFEXITED(gs) || WEXITSTATUS(gs) != 0) return 1;
        if (differs(r->addr, data, 0, k_size)) return 2;
        if (!conn->unmap(r.value()).ok()) return 3;  // the child's copy: the daemon follows the munmap
        ::sleep(1);  // alive, its region gone: the daemon lets go of it already
        return 0;
    });
    CHECK(exited_with(st, 0));
    CHECK(d.wait_log("the forked child unmapped every region"));
    CHECK(d.wait_until([&](const auto& s) { return s.clients == before.clients && s.regions == before.regions; }));
    CHECK(differs(r->addr, data, 0, k_size) == 0);  // the parent's region is untouched
    CHECK(conn->unmap(r.value()).ok());
}

TEST_CASE("a forked child of a region outside the page cache (PAGERD_CACHE=0) reads it through the daemon", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 911);
    const auto data = read_file(dir.file("data"));
    Daemon d;
    auto conn = d.connect();
    ::setenv("PAGERD_CACHE", "0", 1);
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::ReadOnly});
    ::unsetenv("PAGERD_CACHE");
    REQUIRE(r.ok());
    touch(r->addr, k_size / 4);
    const int st = run_child([&] { return differs(r->addr, data, 0, k_size); });
    CHECK(exited_with(st, 0));
    CHECK(conn->unmap(r.value()).ok());
}

TEST_CASE("a Shared region with memory of its own (Sigsegv tracking) is not in a forked child", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 913);
    Daemon d;
    auto conn = d.connect();
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::Shared, Tracking::Sigsegv});
    REQUIRE(r.ok());
    auto found = run_child([&] { return conn->find(r->addr).ok() ? 1 : 0; });
    CHECK(exited_with(found, 0));  // the child's library knows it is not there
    const int st = run_child([&] {
        reset_fatal_signals();
        return static_cast<const volatile std::uint8_t*>(r->addr)[0];
    });
    CHECK(killed_by(st, SIGSEGV));
    CHECK(conn->unmap(r.value()).ok());
}

TEST_CASE("a forked child whose daemon stops gets SIGBUS on pages not loaded, never zeros", "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), k_size, 915);
    const auto data = read_file(dir.file("data"));
    Daemon d;
    auto conn = d.connect();
    auto r = conn->map_file(dir.file("data"), {0, k_size, Access::ReadOnly, Tracking::Auto, nullptr,
                                               libclient::Prefetch::None});
    REQUIRE(r.ok());
    int go[2];
    REQUIRE(::pipe(go) == 0);
    const pid_t child = start_child([&] {
        reset_fatal_signals();
        // Loaded while the daemon runs:
        if (differs(r->addr, data, 0, k_page)) return 1;
        char c;
        if (::read(go[0], &c, 1) != 1) return 2;
        // The daemon is gone: a page loaded before still reads right; one never loaded
        // must raise SIGBUS rather than read zeros.
        if (differs(r->addr, data, 0, k_page)) return 3;
        return differs(static_cast<std::uint8_t*>(r->addr) + k_size - k_page, data, k_size - k_page, k_page) + 10;
    });
    ::close(go[0]);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the child read its first page
    CHECK(d.stop() == 0);
    REQUIRE(::write(go[1], "x", 1) == 1);
    ::close(go[1]);
    const int st = wait_child(child);
    INFO("child status " << st);
    CHECK(killed_by(st, SIGBUS));
}

TEST_CASE("a client without CAP_SYS_PTRACE gets no fork support: its child has no regions (SIGSEGV), never zeros",
          "[fork]")
{
    TempDir dir;
    make_file(dir.file("data"), 65536, 917);
    ::chmod(dir.path().c_str(), 0755);
    ::chmod(dir.file("data").c_str(), 0644);
    Daemon d;
    const std::string sock_dir = d.socket().substr(0, d.socket().rfind('/'));
    ::chmod(sock_dir.c_str(), 0755);  // let another user reach the socket
    const auto child = run_command({PAGERD_TEST_CHILD, "fork-as-nobody", d.socket(), dir.file("data")});
    INFO("status " << child.status << ": " << child.err);
    CHECK(exited_with(child.status, 0));
}
