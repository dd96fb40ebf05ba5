// Reading a file much larger than the reader's memory cgroup. The baseline: the kernel's
// own mmap of the file works in a cgroup a quarter of the file's size (its page cache is
// reclaimable). The goal: a client reading through pagerd works in a cgroup far smaller
// than the file too, and is charged little, because the cache belongs to the daemon
// (`--memory-max`), not to the client.
//
// Each reader is a forked child, started before the test runs any thread or opens any
// connection (harness.hpp), then put into its cgroup by the parent before it is told to
// start (through a pipe: the daemon's socket, which exists only later).
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <utility>

#include "cgroup.hpp"
#include "harness.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;
constexpr std::uint64_t k_file_size = 1024 * k_mib;
constexpr std::uint64_t k_random_pages = 20000;
constexpr std::uint32_t k_seed = 4711;
constexpr std::uint64_t k_prng_seed = 0x5eed'cafe'f00dull;
// Long enough for a 1 GiB read on a slow machine, short enough to end before CTest's
// 300 s per test.
constexpr auto k_child_timeout = 240s;

// Child exit codes (0: every byte read was right).
constexpr int k_no_go = 10;            // the parent never said go
constexpr int k_not_in_cgroup = 11;    // /proc/self/cgroup does not name the test's cgroup
constexpr int k_open_failed = 20;
constexpr int k_mmap_failed = 21;
constexpr int k_connect_failed = 30;
constexpr int k_map_failed = 31;
constexpr int k_wrong_sequential = 40;  // a byte of the sequential pass differs from the file
constexpr int k_wrong_random = 41;      // a byte of the random pass differs

std::string describe(int status)
{
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + ::strsignal(WTERMSIG(status)) + ")";
    return "wait status " + std::to_string(status);
}

std::string mib(std::uint64_t bytes)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / k_mib);
    return buf;
}

// Writes the file out and drops it from the page cache, so that whoever reads it next
// loads it from the disk and is charged for it.
void drop_from_page_cache(const std::string& path)
{
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK(::fsync(fd) == 0);
    CHECK(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
    ::close(fd);
}

// Reads 8 bytes of every page in order (at an offset that moves with the page), then
// k_random_pages whole pages picked by a fixed PRNG, comparing each byte to the file's
// pattern. Returns 0, k_wrong_sequential or k_wrong_random. `before_random` runs between
// the two passes.
template <typename F>
int read_and_check(const std::uint8_t* base, std::uint64_t size, std::uint32_t seed, F before_random)
{
    const auto* p = static_cast<const volatile std::uint8_t*>(base);
    const std::uint64_t pages = size / k_page;
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        const std::uint64_t at = pg * k_page + (pg * 520) % (k_page - 8);
        for (std::uint64_t i = at; i < at + 8; ++i)
            if (p[i] != pattern_byte(i, seed)) return k_wrong_sequential;
    }
    before_random();
    std::mt19937_64 prng(k_prng_seed);
    std::uniform_int_distribution<std::uint64_t> pick(0, pages - 1);
    for (std::uint64_t n = 0; n < k_random_pages; ++n) {
        const std::uint64_t at = pick(prng) * k_page;
        for (std::uint64_t i = at; i < at + k_page; ++i)
            if (p[i] != pattern_byte(i, seed)) return k_wrong_random;
    }
    return 0;
}

// Whether this process is in the cgroup named `name` (its /proc/self/cgroup line ends so).
bool in_cgroup(const std::string& name)
{
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    const std::string tail = "/" + name;
    while (std::getline(in, line))
        if (line.size() >= tail.size() && line.compare(line.size() - tail.size(), tail.size(), tail) == 0) return true;
    return false;
}

// The parent's word to a child waiting to start: a message, then end of file.
class Gate {
public:
    Gate() { REQUIRE(::pipe2(m_fd, O_CLOEXEC) == 0); }
    ~Gate()
    {
        for (int fd : m_fd)
            if (fd >= 0) ::close(fd);
    }
    Gate(const Gate&) = delete;
    Gate& operator=(const Gate&) = delete;

    // In the child: waits for the message ("" when the parent closed without one).
    std::string wait()
    {
        ::close(m_fd[1]);
        m_fd[1] = -1;
        std::string msg;
        char buf[256];
        ssize_t n;
        while ((n = ::read(m_fd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
            if (n > 0) msg.append(buf, static_cast<std::size_t>(n));
        return msg;
    }
    // In the parent, after the fork.
    void open_only_for_writing()
    {
        ::close(m_fd[0]);
        m_fd[0] = -1;
    }
    void send(const std::string& msg)
    {
        REQUIRE(::write(m_fd[1], msg.data(), msg.size()) == static_cast<ssize_t>(msg.size()));
        ::close(m_fd[1]);
        m_fd[1] = -1;
    }

private:
    int m_fd[2] = {-1, -1};
};

// Kills and reaps a child the test leaves early (a failed REQUIRE) without waiting for.
struct ChildGuard {
    pid_t pid = -1;
    ~ChildGuard()
    {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
    pid_t release() { return std::exchange(pid, -1); }
};

std::string tail_of(const std::string& s, std::size_t n = 4000) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

}  // namespace

#if defined(__SANITIZE_THREAD__)
constexpr bool k_tsan = true;
#else
constexpr bool k_tsan = false;
#endif

TEST_CASE("the kernel's mmap reads a file 4x larger than its cgroup's memory", "[cache][cgroup]")
{
    std::string why;
    if (!MemoryCgroup::available(&why)) {
        WARN("skipped: no memory cgroup: " << why);
        return;
    }
    if (k_tsan) {
        // ThreadSanitizer's shadow of every byte the reader touches is the reader's own
        // memory, charged to its cgroup: 1 GiB read means more than 256 MiB of shadow.
        WARN("skipped under ThreadSanitizer: its shadow memory is charged to the reader's cgroup");
        return;
    }
    TempDir dir;
    const std::string path = dir.file("big");
    make_file(path, k_file_size, k_seed);
    drop_from_page_cache(path);
    MemoryCgroup cg(256 * k_mib);
    if (!cg.ok()) FAIL("memory cgroup: " << cg.error());

    Gate gate;
    ChildGuard child;
    const std::string name = cg.name();
    child.pid = start_child([&] {
        if (gate.wait() != "go") return k_no_go;
        if (!in_cgroup(name)) return k_not_in_cgroup;
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return k_open_failed;
        void* p = ::mmap(nullptr, k_file_size, PROT_READ, MAP_SHARED, fd, 0);
        ::close(fd);
        if (p == MAP_FAILED) return k_mmap_failed;
        // MADV_RANDOM for the random pass, as a program that reads so would say: without
        // it each fault reads around (32 pages) in a cgroup that is full, and the pass
        // takes about 120 s instead of 1 s here (kernel 6.18, cgroup v1).
        const int rc = read_and_check(static_cast<const std::uint8_t*>(p), k_file_size, k_seed,
                                      [&] { ::madvise(p, k_file_size, MADV_RANDOM); });
        ::munmap(p, k_file_size);
        return rc;
    });
    gate.open_only_for_writing();
    std::string err;
    if (!cg.add(child.pid, &err)) FAIL("add the child to " << cg.path() << ": " << err);

    const auto t0 = std::chrono::steady_clock::now();
    gate.send("go");
    const int st = wait_child(child.release(), k_child_timeout);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    WARN("mmap reader, cgroup v" << cg.version() << " limit " << mib(cg.limit()) << ": " << describe(st) << " in "
                                 << secs << " s; peak charge " << mib(cg.peak()) << ", OOM kills " << cg.oom_kills());
    CHECK(exited_with(st, 0));
    CHECK(cg.oom_kills() == 0);
}

TEST_CASE("a client in a cgroup far smaller than the file reads all of it through pagerd", "[cache][cgroup]")
{
    std::string why;
    if (!MemoryCgroup::available(&why)) {
        WARN("skipped: no memory cgroup: " << why);
        return;
    }
    if (k_tsan) {
        // ThreadSanitizer's shadow of every byte the reader touches is the reader's own
        // memory, charged to its cgroup: 1 GiB read means more than 256 MiB of shadow.
        WARN("skipped under ThreadSanitizer: its shadow memory is charged to the reader's cgroup");
        return;
    }
    TempDir dir;
    const std::string path = dir.file("big");
    make_file(path, k_file_size, k_seed);
    drop_from_page_cache(path);
    MemoryCgroup cg(256 * k_mib);
    if (!cg.ok()) FAIL("memory cgroup: " << cg.error());
    // The cache is the daemon's and bounded; the client keeps only what it touches lately.
    constexpr std::uint64_t k_client_peak_max = 96 * k_mib;

    Gate gate;
    ChildGuard child;
    const std::string name = cg.name();
    child.pid = start_child([&] {
        const std::string socket = gate.wait();
        if (socket.empty()) return k_no_go;
        if (!in_cgroup(name)) return k_not_in_cgroup;
        auto conn = libclient::Connection::connect({socket, "cgroup-reader"});
        if (!conn) return k_connect_failed;
        auto r = conn.value()->map_file(path, {0, k_file_size, Access::ReadOnly});
        if (!r) return k_map_failed;
        return read_and_check(static_cast<const std::uint8_t*>(r.value().addr), k_file_size, k_seed, [] {});
    });
    gate.open_only_for_writing();
    std::string err;
    if (!cg.add(child.pid, &err)) FAIL("add the child to " << cg.path() << ": " << err);

    Daemon daemon({"--memory-max", "128MiB"});
    const auto t0 = std::chrono::steady_clock::now();
    gate.send(daemon.socket());
    const int st = wait_child(child.release(), k_child_timeout);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const std::uint64_t peak = cg.peak();
    WARN("pagerd client, cgroup v" << cg.version() << " limit " << mib(cg.limit()) << ": " << describe(st) << " in "
                                   << secs << " s; peak charge " << mib(peak) << " (at most " << mib(k_client_peak_max)
                                   << " wanted), OOM kills " << cg.oom_kills());
    if (peak == 0) WARN("the kernel does not report the cgroup's peak charge (no memory.peak): not checked");
    INFO("child exit codes: " << k_connect_failed << " connect, " << k_map_failed << " map, " << k_wrong_sequential
                              << " wrong byte (sequential), " << k_wrong_random << " wrong byte (random)");
    INFO("pagerd log (end):\n" << tail_of(daemon.log()));
    CHECK(exited_with(st, 0));
    CHECK(cg.oom_kills() == 0);
    CHECK(peak < k_client_peak_max);
    CHECK(daemon.alive());
}
