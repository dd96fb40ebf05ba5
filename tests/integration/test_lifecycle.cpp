// Clients and the daemon coming and going at the worst moments.
#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "harness.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;

TEST_CASE("a client killed with SIGKILL while faulting is freed and the daemon serves on", "[lifecycle]")
{
    TempDir dir;
    const std::uint64_t size = 256 * 1024 * 1024;
    make_file(dir.file("big"), size, 71);
    make_file(dir.file("small"), 1024 * 1024, 72);
    const auto small = read_file(dir.file("small"));
    Daemon daemon;
    const auto fds_before = daemon.fd_count();
    for (int round = 0; round < 3; ++round) {
        int pipefd[2];
        REQUIRE(::pipe(pipefd) == 0);
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            reset_fatal_signals();
            auto c = libclient::Connection::connect({daemon.socket(), "victim"});
            if (!c) _exit(3);
            auto r = c.value()->map_file(dir.file("big"), {0, size, Access::ReadOnly});
            if (!r) _exit(4);
            std::atomic<bool> told{false};
            std::vector<std::thread> pool;
            for (int t = 0; t < 4; ++t)
                pool.emplace_back([&, t] {
                    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
                    for (std::uint64_t off = t * 4096; off < size; off += 4 * 4096) {
                        (void)p[off];
                        if (off > 8 * 1024 * 1024 && !told.exchange(true)) (void)!::write(pipefd[1], "x", 1);
                    }
                });
            for (auto& th : pool) th.join();
            _exit(0);
        }
        char x;
        REQUIRE(::read(pipefd[0], &x, 1) == 1);  // the child is in the middle of faulting
        ::kill(pid, SIGKILL);
        int st;
        ::waitpid(pid, &st, 0);
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        CHECK(killed_by(st, SIGKILL));
    }
    REQUIRE(daemon.alive());
    CHECK(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0 && s.mapped_bytes == 0; }));
    CHECK(daemon.wait_fds_at_most(fds_before));
    // Others are served as before.
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("small"), {0, small.size(), Access::ReadOnly});
    REQUIRE(r.ok());
    CHECK(std::memcmp(r->addr, small.data(), small.size()) == 0);
}

namespace {
std::atomic<std::uintptr_t> g_lo{0}, g_hi{0};
void on_segv(int, siginfo_t* si, void*)
{
    const auto a = reinterpret_cast<std::uintptr_t>(si->si_addr);
    _exit(a >= g_lo && a < g_hi ? 42 : 43);
}
}  // namespace

TEST_CASE("unmap while other threads fault: no hang, no wrong bytes, the region is freed", "[lifecycle][unmap]")
{
    TempDir dir;
    const std::uint64_t size = 64 * 1024 * 1024;
    make_file(dir.file("data"), size, 81);
    make_file(dir.file("keep"), 4 * 1024 * 1024, 82);
    Daemon daemon;
    for (int round = 0; round < 5; ++round) {
        const int st = run_child([&] {
            auto c = libclient::Connection::connect({daemon.socket(), "unmapper"});
            if (!c) return 3;
            auto keep = c.value()->map_file(dir.file("keep"), {0, 4 * 1024 * 1024, Access::ReadOnly});
            auto r = c.value()->map_file(dir.file("data"), {0, size, Access::ReadOnly});
            if (!r || !keep) return 4;
            g_lo = reinterpret_cast<std::uintptr_t>(r->addr);
            g_hi = g_lo + size;
            struct sigaction sa{};
            sa.sa_sigaction = on_segv;
            sa.sa_flags = SA_SIGINFO;
            ::sigaction(SIGSEGV, &sa, nullptr);
            std::atomic<bool> bad{false};
            std::vector<std::thread> pool;
            for (int t = 0; t < 3; ++t)
                pool.emplace_back([&, t] {
                    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
                    for (std::uint64_t off = t * 4096 + 7; off < size; off += 3 * 4096)
                        if (p[off] != pattern_byte(off, 81)) bad = true;
                });
            // Meanwhile another thread keeps faulting in the region that stays.
            std::thread other([&] {
                const auto* q = static_cast<const volatile std::uint8_t*>(keep->addr);
                for (std::uint64_t off = 0; off < 4 * 1024 * 1024; off += 4096)
                    if (q[off] != pattern_byte(off, 82)) bad = true;
            });
            std::this_thread::sleep_for(std::chrono::milliseconds(5 + 10 * round));
            if (!c.value()->unmap(r.value())) return 5;
            other.join();
            for (auto& th : pool) th.join();  // only if they all finished before the unmap
            return bad ? 6 : 0;
        });
        INFO("round " << round << " status " << st);
        // Either every toucher finished before the unmap (0), or one touched the unmapped
        // range and got SIGSEGV at an address inside it (42). Never a hang or wrong bytes.
        CHECK((exited_with(st, 0) || exited_with(st, 42)));
    }
    CHECK(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0; }));
}

TEST_CASE("when the daemon dies, faults on unloaded pages raise SIGBUS instead of hanging", "[lifecycle][daemon-death]")
{
    TempDir dir;
    make_file(dir.file("data"), 4 * 1024 * 1024, 91);
    Daemon daemon;
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        reset_fatal_signals();
        auto c = libclient::Connection::connect({daemon.socket(), "orphan"});
        if (!c) _exit(3);
        auto r = c.value()->map_file(dir.file("data"), {0, 4 * 1024 * 1024, Access::ReadOnly});
        if (!r) _exit(4);
        const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
        if (p[0] != pattern_byte(0, 91)) _exit(5);  // served while the daemon lives
        (void)!::write(pipefd[1], "x", 1);
        while (c.value()->daemon_alive()) std::this_thread::sleep_for(1ms);
        if (p[100] != pattern_byte(100, 91)) _exit(6);  // loaded pages stay readable
        (void)p[3 * 1024 * 1024];                          // never loaded: SIGBUS
        _exit(7);
    }
    char x;
    REQUIRE(::read(pipefd[0], &x, 1) == 1);
    daemon.kill_hard();
    int st = 0;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (::waitpid(pid, &st, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            FAIL("the client hung after the daemon died");
        }
        std::this_thread::sleep_for(5ms);
    }
    CHECK(killed_by(st, SIGBUS));
}

TEST_CASE("a user-mode-only userfaultfd is reported, and system calls on unloaded memory fail", "[lifecycle][uffd-mode]")
{
    TempDir dir;
    make_file(dir.file("data"), 1024 * 1024, 93);
    Daemon daemon;
    const int st = run_child([&] {
        ::setenv("PAGERD_UFFD_MODE", "user-only", 1);
        auto c = libclient::Connection::connect({daemon.socket(), "usermode"});
        if (!c) return 3;
        if (!c.value()->user_mode_only()) return 4;
        auto s = c.value()->status();
        if (!s || !s->this_client_user_mode_only || s->user_mode_only_clients != 1) return 5;
        auto r = c.value()->map_file(dir.file("data"), {0, 1024 * 1024, Access::ReadOnly});
        if (!r) return 6;
        const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
        if (p[0] != pattern_byte(0, 93)) return 7;  // user-mode touches are served
        int fds[2];
        if (::pipe(fds) != 0) return 8;
        const ssize_t w = ::write(fds[1], static_cast<const char*>(r->addr) + 512 * 1024, 100);
        return w == -1 && errno == EFAULT ? 0 : 9;
    });
    CHECK(exited_with(st, 0));
    CHECK(daemon.status().user_mode_only_clients == 0);
}

TEST_CASE("a client that requires a capability the daemon lacks fails with a clear message", "[lifecycle][caps]")
{
    Daemon daemon;
    auto c = libclient::Connection::connect({daemon.socket(), "picky", std::uint64_t{1} << 40});
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.error().message, Catch::Contains("lacks required capabilities") && Catch::Contains("bit 40"));
    CHECK(daemon.alive());
}

TEST_CASE("connecting without a daemon fails clearly and $PAGERD_SOCKET is honoured", "[lifecycle][socket]")
{
    TempDir dir;
    auto c = libclient::Connection::connect({dir.file("nothing.sock")});
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.error().message, Catch::Contains("is pagerd running"));
    CHECK(libclient::resolve_socket_path("/x") == "/x");
    Daemon daemon;
    ::setenv("PAGERD_SOCKET", daemon.socket().c_str(), 1);
    CHECK(libclient::resolve_socket_path("") == daemon.socket());
    auto via_env = libclient::Connection::connect({});
    ::unsetenv("PAGERD_SOCKET");
    REQUIRE(via_env.ok());
    CHECK(via_env.value()->ping().ok());
    CHECK(libclient::resolve_socket_path("") == "/run/pagerd/pagerd.sock");
}
