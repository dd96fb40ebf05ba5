// The daemon's page cache (daemon/cache.hpp, libclient/cached.cpp, proto/PROTOCOL.md "MAP"):
// one copy of a file however many clients map it, private writes that stay private,
// eviction under --memory-max that never shows a wrong byte, a 2Q policy that keeps a hot
// set through a scan, and Prefetch::All filling the cache.
//
// Children are forked before the test process starts any thread or opens any connection
// (harness.hpp); they get the daemon's socket and their orders through pipes, line by line.
#include <catch2/catch.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "cgroup.hpp"
#include "harness.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Prefetch;

#if defined(__SANITIZE_THREAD__)
constexpr bool k_tsan = true;
#else
constexpr bool k_tsan = false;
#endif

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;

// Child exit codes (0: all went well).
constexpr int k_no_go = 10;            // the parent closed the pipe without a word
constexpr int k_connect_failed = 30;
constexpr int k_map_failed = 31;
constexpr int k_wrong_byte = 40;       // a page differs from the file
constexpr int k_wrong_private = 41;    // a page written privately lost its bytes
constexpr int k_report_failed = 50;

// Word w (bytes 8w..8w+7) of a file made with `seed`, as a little-endian u64: the same
// bytes as pattern_byte (checked by the first test), eight at a time.
std::uint64_t pattern_word(std::uint64_t w, std::uint32_t seed)
{
    std::uint64_t x = (w + 1) * 0x9E3779B97F4A7C15ull ^ (std::uint64_t{seed} << 32);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return x;
}

// Whether the page at q holds the file's bytes at file offset `off` (a page multiple).
bool page_is_file(const std::uint8_t* q, std::uint64_t off, std::uint32_t seed)
{
    const std::uint64_t w0 = off / 8;
    for (std::uint64_t i = 0; i < k_page / 8; ++i) {
        std::uint64_t v;
        std::memcpy(&v, q + i * 8, 8);
        if (v != pattern_word(w0 + i, seed)) return false;
    }
    return true;
}

// What a client writes into page `pg` of its private copy: never a page of the file.
std::uint64_t tag_word(std::uint64_t pg, std::uint64_t who) { return 0xC0DE'0000'0000'0000ull ^ (who << 40) ^ pg; }

void write_tag(std::uint8_t* q, std::uint64_t pg, std::uint64_t who)
{
    const std::uint64_t v = tag_word(pg, who);
    for (std::uint64_t i = 0; i < k_page / 8; ++i) std::memcpy(q + i * 8, &v, 8);
}

bool page_is_tag(const std::uint8_t* q, std::uint64_t pg, std::uint64_t who)
{
    const std::uint64_t v = tag_word(pg, who);
    for (std::uint64_t i = 0; i < k_page / 8; ++i) {
        std::uint64_t got;
        std::memcpy(&got, q + i * 8, 8);
        if (got != v) return false;
    }
    return true;
}

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
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / k_mib);
    return buf;
}

std::string tail_of(const std::string& s, std::size_t n = 6000) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

std::string figures(const libclient::Status& s)
{
    return "cache: budget " + mib(s.cache_budget) + ", resident " + mib(s.cache_bytes) + ", files " +
           std::to_string(s.cache_files) + ", loads " + std::to_string(s.cache_loads) + ", hits " +
           std::to_string(s.cache_hits) + ", evictions " + std::to_string(s.cache_evictions) + ", refaults " +
           std::to_string(s.cache_refaults) + "; faults " + std::to_string(s.faults);
}

// Two pipes between the parent and one child, for lines of text. Made before the fork;
// each side then closes the ends that are the other's.
class Channel {
public:
    Channel()
    {
        REQUIRE(::pipe2(m_down, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(m_up, O_CLOEXEC) == 0);
    }
    ~Channel()
    {
        for (int* fds : {m_down, m_up})
            for (int i = 0; i < 2; ++i)
                if (fds[i] >= 0) ::close(fds[i]);
    }
    Channel(const Channel&) = delete;
    Channel& operator=(const Channel&) = delete;

    void child_side() { close_ends(m_down[1], m_up[0]); }
    void parent_side() { close_ends(m_down[0], m_up[1]); }
    // Child: the next line from the parent ("" at end of file).
    std::string from_parent() { return read_line(m_down[0]); }
    bool to_parent(const std::string& line) { return write_line(m_up[1], line); }
    // Parent.
    bool to_child(const std::string& line) { return write_line(m_down[1], line); }
    std::string from_child() { return read_line(m_up[0]); }
    // Parent: false if no whole line came within the timeout.
    bool from_child_within(std::chrono::milliseconds timeout, std::string& line)
    {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        line.clear();
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return false;
            pollfd p{m_up[0], POLLIN, 0};
            const int n = ::poll(&p, 1, static_cast<int>(left.count()));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            char c;
            const ssize_t got = ::read(m_up[0], &c, 1);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return true;  // end of file: what came is the line
            if (c == '\n') return true;
            line.push_back(c);
        }
    }

private:
    static void close_ends(int& a, int& b)
    {
        ::close(a);
        ::close(b);
        a = b = -1;
    }
    static std::string read_line(int fd)
    {
        std::string s;
        char c;
        for (;;) {
            const ssize_t n = ::read(fd, &c, 1);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0 || c == '\n') return s;
            s.push_back(c);
        }
    }
    static bool write_line(int fd, std::string line)
    {
        line.push_back('\n');
        return ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    }
    int m_down[2] = {-1, -1};  // parent -> child
    int m_up[2] = {-1, -1};    // child -> parent
};

// Kills and reaps the children a test leaves early (a failed REQUIRE) without waiting for.
struct Children {
    std::vector<pid_t> pids;
    ~Children()
    {
        for (pid_t p : pids)
            if (p > 0) {
                ::kill(p, SIGKILL);
                ::waitpid(p, nullptr, 0);
            }
    }
    int wait(std::size_t i)
    {
        const pid_t p = std::exchange(pids[i], -1);
        return wait_child(p, 30s);
    }
};

libclient::MapOptions map_options(std::uint64_t offset, std::uint64_t length, Access access,
                                  Prefetch prefetch = Prefetch::Sequential)
{
    libclient::MapOptions o;
    o.offset = offset;
    o.length = length;
    o.access = access;
    o.prefetch = prefetch;
    return o;
}

libclient::Region map_or_fail(libclient::Connection& c, const std::string& path, const libclient::MapOptions& o)
{
    auto r = c.map_file(path, o);
    if (!r) FAIL("map " << path << ": " << r.error().message);
    return r.value();
}

// Waits until the daemon's cache_loads stays the same for a few polls (loads in flight,
// such as read-ahead windows past the last touch, have landed), then returns the status.
libclient::Status settled(const Daemon& d)
{
    auto last = d.status();
    int same = 0;
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    while (same < 3 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(5ms);
        auto s = d.status();
        same = s.cache_loads == last.cache_loads ? same + 1 : 0;
        last = s;
    }
    return last;
}

// In a child: connects to the socket it is sent, maps the whole file ReadOnly, checks every
// byte and reports "read" (or "wrong"). Keeps the mapping until the parent
// says "exit".
int shared_reader(Channel& ch, const std::string& path, std::uint64_t size, std::uint32_t seed)
{
    ch.child_side();
    const std::string socket = ch.from_parent();
    if (socket.empty()) return k_no_go;
    auto conn = libclient::Connection::connect({socket, "cache-reader"});
    if (!conn) return k_connect_failed;
    auto r = conn.value()->map_file(path, map_options(0, size, Access::ReadOnly));
    if (!r) return k_map_failed;
    const auto* p = static_cast<const std::uint8_t*>(r.value().addr);
    int rc = 0;
    for (std::uint64_t pg = 0; pg < size / k_page && rc == 0; ++pg)
        if (!page_is_file(p + pg * k_page, pg * k_page, seed)) rc = k_wrong_byte;
    if (!ch.to_parent(rc == 0 ? "read" : "wrong")) return k_report_failed;
    if (ch.from_parent() != "exit" && rc == 0) return k_no_go;
    return rc;
}

}  // namespace

TEST_CASE("four clients of one file share one copy in the daemon's cache", "[cache][share]")
{
    // pattern_word is pattern_byte eight bytes at a time.
    for (std::uint64_t i : {0ull, 1ull, 7ull, 8ull, 4095ull, 123456789ull}) {
        const std::uint64_t w = pattern_word(i / 8, 33);
        REQUIRE(static_cast<std::uint8_t>(w >> (8 * (i % 8))) == pattern_byte(i, 33));
    }
    TempDir dir;
    const std::string path = dir.file("big");
    // Four instrumented readers of 256 MiB are slow under ThreadSanitizer.
    constexpr std::uint64_t size = (k_tsan ? 32 : 256) * k_mib, pages = size / k_page;
    constexpr std::uint32_t seed = 33;
    make_file(path, size, seed);

    // One memory cgroup per child, when we can: what the kernel charged each reader.
    std::string why;
    const bool cgroups = MemoryCgroup::available(&why);
    if (!cgroups) WARN("no memory cgroups (" << why << "): the children's charges are not measured");
    std::vector<std::unique_ptr<MemoryCgroup>> cgs;
    if (cgroups)
        for (int i = 0; i < 4; ++i) {
            cgs.push_back(std::make_unique<MemoryCgroup>(1024 * k_mib));
            if (!cgs.back()->ok()) FAIL("memory cgroup: " << cgs.back()->error());
        }

    Channel ch[4];
    Children kids;
    for (int i = 0; i < 4; ++i) kids.pids.push_back(start_child([&, i] { return shared_reader(ch[i], path, size, seed); }));
    for (int i = 0; i < 4; ++i) ch[i].parent_side();
    if (cgroups)
        for (int i = 0; i < 4; ++i) {
            std::string err;
            if (!cgs[i]->add(kids.pids[i], &err)) FAIL("add child " << i << " to its cgroup: " << err);
        }

    Daemon daemon({"--memory-max", "512MiB"});
    const auto s0 = daemon.status();

    // Client 1 reads the whole file: every page loaded once.
    REQUIRE(ch[0].to_child(daemon.socket()));
    const std::string first = ch[0].from_child();
    INFO("client 1 said '" << first << "'");
    REQUIRE(first == "read");
    const auto s1 = settled(daemon);

    // Clients 2 to 4 read it all at once: the cache serves them.
    for (int i = 1; i < 4; ++i) REQUIRE(ch[i].to_child(daemon.socket()));
    std::string said[4] = {first};
    for (int i = 1; i < 4; ++i) said[i] = ch[i].from_child();
    const auto s2 = settled(daemon);

    // Each child still maps the whole file: what it holds, and what it was charged.
    std::uint64_t anon[4], shmem[4], peak[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; ++i) {
        anon[i] = proc_status_bytes(kids.pids[i], "RssAnon");
        shmem[i] = proc_status_bytes(kids.pids[i], "RssShmem");
        if (cgroups) peak[i] = cgs[i]->peak();
    }
    for (int i = 0; i < 4; ++i) CHECK(ch[i].to_child("exit"));
    int st[4];
    for (int i = 0; i < 4; ++i) st[i] = kids.wait(static_cast<std::size_t>(i));

    WARN("after client 1: " << figures(s1) << "\nafter clients 2-4: " << figures(s2));
    for (int i = 0; i < 4; ++i)
        WARN("client " << i + 1 << ": " << describe(st[i]) << ", said '" << said[i] << "', RssAnon " << mib(anon[i])
                       << ", RssShmem " << mib(shmem[i])
                       << (cgroups ? ", cgroup peak " + mib(peak[i]) : std::string(", cgroup peak not measured")));
    INFO("pagerd log (end):\n" << tail_of(daemon.log()));
    for (int i = 0; i < 4; ++i) {
        INFO("client " << i + 1 << " (exit codes: " << k_wrong_byte << " wrong byte, " << k_map_failed << " map failed)");
        CHECK(said[i] == "read");
        CHECK(exited_with(st[i], 0));
    }
    // One cache, one copy.
    CHECK(s1.cache_files == 1);
    CHECK(s2.cache_files == 1);
    CHECK(s2.cache_bytes <= size + k_page);
    CHECK(s2.cache_bytes >= size);
    // Every page loaded exactly once, by client 1; clients 2-4 loaded nothing.
    CHECK(s1.cache_loads - s0.cache_loads == pages);
    CHECK(s2.cache_loads == s1.cache_loads);
    CHECK(s2.cache_hits - s1.cache_hits >= 3 * pages);
    CHECK(s2.cache_evictions == 0);
    for (int i = 0; i < 4; ++i) {
        INFO("client " << i + 1);
        // The pages it maps are the cache's (shared memory), not private copies. (Under
        // ThreadSanitizer a reader's own memory is its runtime and shadow: ~140 MiB.)
        const std::uint64_t own = k_tsan ? 256 * k_mib : 32 * k_mib;
        CHECK(anon[i] < own);
        CHECK(shmem[i] >= size - 8 * k_mib);
        if (cgroups && peak[i] > 0) CHECK(peak[i] < 2 * own);
    }
    CHECK(daemon.alive());
    CHECK(daemon.wait_until([](const auto& s) { return s.cache_files == 0 && s.regions == 0; }));
}

TEST_CASE("PrivateWritable writes stay private while the cache is shared", "[cache][private]")
{
    TempDir dir;
    const std::string path = dir.file("data");
    constexpr std::uint64_t size = 16 * k_mib, pages = size / k_page;
    constexpr std::uint32_t seed = 77;
    make_file(path, size, seed);
    // Writer (who 1): reads the first half, then writes pages pg % 4 == 1 all over (the
    // second half's are first touched by the write). Reader (who 2): writes pg % 4 == 2.
    auto w_written = [](std::uint64_t pg) { return pg % 4 == 1; };
    auto r_written = [](std::uint64_t pg) { return pg % 4 == 2; };

    Channel wch, rch;
    Children kids;
    kids.pids.push_back(start_child([&]() -> int {
        Channel& ch = wch;
        ch.child_side();
        const std::string socket = ch.from_parent();
        if (socket.empty()) return k_no_go;
        auto conn = libclient::Connection::connect({socket, "private-writer"});
        if (!conn) return k_connect_failed;
        auto r = conn.value()->map_file(path, map_options(0, size, Access::PrivateWritable));
        if (!r) return k_map_failed;
        auto* p = static_cast<std::uint8_t*>(r.value().addr);
        auto check_all = [&](bool mine) -> int {
            for (std::uint64_t pg = 0; pg < pages; ++pg) {
                if (mine && w_written(pg)) {
                    if (!page_is_tag(p + pg * k_page, pg, 1)) return k_wrong_private;
                } else if (!page_is_file(p + pg * k_page, pg * k_page, seed)) {
                    return k_wrong_byte;
                }
            }
            return 0;
        };
        for (std::uint64_t pg = 0; pg < pages / 2; ++pg)
            if (!page_is_file(p + pg * k_page, pg * k_page, seed)) return k_wrong_byte;
        for (std::uint64_t pg = 0; pg < pages; ++pg)
            if (w_written(pg)) write_tag(p + pg * k_page, pg, 1);
        int rc = check_all(true);
        if (!ch.to_parent("written " + std::to_string(rc))) return k_report_failed;
        if (rc) return rc;
        // The reader has read and written meanwhile: our pages are still ours, the rest the file's.
        if (ch.from_parent() != "check") return k_no_go;
        rc = check_all(true);
        if (!ch.to_parent("checked " + std::to_string(rc))) return k_report_failed;
        if (rc) return rc;
        // Our copies dropped: the file's bytes again, from the cache.
        if (ch.from_parent() != "dontneed") return k_no_go;
        if (::madvise(p, size, MADV_DONTNEED) != 0) return k_report_failed;
        rc = check_all(false);
        if (!ch.to_parent("dropped " + std::to_string(rc))) return k_report_failed;
        if (ch.from_parent() != "exit") return k_no_go;
        return rc;
    }));
    kids.pids.push_back(start_child([&]() -> int {
        Channel& ch = rch;
        ch.child_side();
        const std::string socket = ch.from_parent();
        if (socket.empty()) return k_no_go;
        auto conn = libclient::Connection::connect({socket, "private-reader"});
        if (!conn) return k_connect_failed;
        auto r = conn.value()->map_file(path, map_options(0, size, Access::PrivateWritable));
        if (!r) return k_map_failed;
        auto* p = static_cast<std::uint8_t*>(r.value().addr);
        int rc = 0;
        // The writer's pages included: the file's bytes.
        for (std::uint64_t pg = 0; pg < pages && !rc; ++pg)
            if (!page_is_file(p + pg * k_page, pg * k_page, seed)) rc = k_wrong_byte;
        for (std::uint64_t pg = 0; pg < pages && !rc; ++pg)
            if (r_written(pg)) write_tag(p + pg * k_page, pg, 2);
        for (std::uint64_t pg = 0; pg < pages && !rc; ++pg) {
            if (r_written(pg) ? !page_is_tag(p + pg * k_page, pg, 2) : !page_is_file(p + pg * k_page, pg * k_page, seed))
                rc = r_written(pg) ? k_wrong_private : k_wrong_byte;
        }
        if (!ch.to_parent("read " + std::to_string(rc))) return k_report_failed;
        if (ch.from_parent() != "exit") return k_no_go;
        return rc;
    }));
    wch.parent_side();
    rch.parent_side();

    Daemon daemon({"--memory-max", "256MiB"});
    REQUIRE(wch.to_child(daemon.socket()));
    const std::string w1 = wch.from_child();
    const auto s1 = settled(daemon);
    REQUIRE(w1 == "written 0");
    REQUIRE(rch.to_child(daemon.socket()));
    const std::string r1 = rch.from_child();
    const auto s2 = settled(daemon);
    CHECK(r1 == "read 0");
    REQUIRE(wch.to_child("check"));
    const std::string w2 = wch.from_child();
    CHECK(w2 == "checked 0");
    REQUIRE(wch.to_child("dontneed"));
    const std::string w3 = wch.from_child();
    CHECK(w3 == "dropped 0");
    const auto s3 = settled(daemon);
    CHECK(wch.to_child("exit"));
    CHECK(rch.to_child("exit"));
    const int wst = kids.wait(0), rst = kids.wait(1);

    WARN("writer: " << w1 << ", " << w2 << ", " << w3 << ", " << describe(wst) << "; reader: " << r1 << ", "
                    << describe(rst) << "\nafter the writer: " << figures(s1) << "\nafter the reader: " << figures(s2)
                    << "\nafter the writer's MADV_DONTNEED: " << figures(s3));
    INFO("pagerd log (end):\n" << tail_of(daemon.log()));
    INFO("exit codes: " << k_wrong_byte << " a file byte wrong, " << k_wrong_private << " a private page lost");
    CHECK(exited_with(wst, 0));
    CHECK(exited_with(rst, 0));
    // One cache, loaded once (by the writer, reads and write faults alike); its private
    // copies are not in it: the reader loaded nothing and the cache holds one file's worth.
    CHECK(s1.cache_files == 1);
    CHECK(s1.cache_loads == pages);
    CHECK(s2.cache_loads == pages);
    CHECK(s3.cache_loads == pages);
    CHECK(s3.cache_bytes <= size);
    // The file itself is unchanged.
    const auto after = read_file(path);
    REQUIRE(after.size() == size);
    std::uint64_t bad = 0;
    for (std::uint64_t pg = 0; pg < pages; ++pg) bad += !page_is_file(after.data() + pg * k_page, pg * k_page, seed);
    CHECK(bad == 0);
    CHECK(daemon.alive());
}

namespace {

// The eviction race, in a child (so that a thread stuck on a fault cannot hang the test):
// two regions over the file (ReadOnly, PrivateWritable) and six threads for `run`; then it
// reports "done <checked> <wrong> <remaps> <remap errors> <madvises> <writes>", a line
// with the first wrong page ("-" if none) and one with the first map error ("-"), and keeps
// its regions until the parent says "exit".
int eviction_storm(Channel& ch, const std::string& path, std::uint64_t size, std::uint32_t seed,
                   std::chrono::milliseconds run)
{
    ch.child_side();
    const std::string socket = ch.from_parent();
    if (socket.empty()) return k_no_go;
    auto connected = libclient::Connection::connect({socket, "eviction-storm"});
    if (!connected) return k_connect_failed;
    auto& conn = connected.value();
    const std::uint64_t pages = size / k_page;
    auto ro = conn->map_file(path, map_options(0, size, Access::ReadOnly));
    auto pw = conn->map_file(path, map_options(0, size, Access::PrivateWritable));
    if (!ro || !pw) return k_map_failed;
    const auto* rp = static_cast<const std::uint8_t*>(ro.value().addr);
    auto* wp = static_cast<std::uint8_t*>(pw.value().addr);

    std::atomic<std::uint64_t> wrong{0};
    std::atomic<bool> noted{false};
    std::string first_wrong = "-";  // written once, by the first to note
    // A wrong page q, page pg of the file, expected to hold the file's bytes (tag 0) or the
    // private writes of `tag`: counted; the first one described by its first wrong word.
    auto note = [&](const char* who, const std::uint8_t* q, std::uint64_t pg, std::uint64_t tag) {
        ++wrong;
        if (noted.exchange(true)) return;
        std::uint64_t i = 0, got = 0, expect = 0;
        for (; i < k_page / 8; ++i) {
            std::memcpy(&got, q + i * 8, 8);
            expect = tag ? tag_word(pg, tag) : pattern_word(pg * k_page / 8 + i, seed);
            if (got != expect) break;
        }
        char buf[240];
        std::snprintf(buf, sizeof buf, "%s: file page %llu at %p: word %llu is %#llx, expected %#llx (%s)", who,
                      static_cast<unsigned long long>(pg), static_cast<const void*>(q),
                      static_cast<unsigned long long>(i), static_cast<unsigned long long>(got),
                      static_cast<unsigned long long>(expect), tag ? "its own write" : "the file's bytes");
        first_wrong = buf;
    };
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> checked{0}, remaps{0}, remap_errors{0}, madvises{0}, writes{0};
    std::string remap_error = "-";
    auto check_ro = [&](const char* who, std::uint64_t pg) {
        const std::uint8_t* q = rp + pg * k_page;
        if (!page_is_file(q, pg * k_page, seed)) note(who, q, pg, 0);
        ++checked;
    };

    std::vector<std::thread> pool;
    for (int t = 0; t < 2; ++t)
        pool.emplace_back([&, t] {  // random whole pages
            std::mt19937_64 prng(1000 + t);
            std::uniform_int_distribution<std::uint64_t> pick(0, pages - 1);
            while (!stop) check_ro("random reader", pick(prng));
        });
    pool.emplace_back([&] {  // sequential runs (read-ahead streams), each dropped afterwards
        std::mt19937_64 prng(2000);
        std::uniform_int_distribution<std::uint64_t> pick(0, pages - 1), len(1, 1024);
        while (!stop) {
            const std::uint64_t from = pick(prng), to = std::min(pages, from + len(prng));
            for (std::uint64_t pg = from; pg < to && !stop; ++pg) check_ro("sequential reader", pg);
            ::madvise(const_cast<std::uint8_t*>(rp) + from * k_page, (to - from) * k_page, MADV_DONTNEED);
            ++madvises;
        }
    });
    pool.emplace_back([&] {  // a third region of the same file, mapped and unmapped again and again
        std::mt19937_64 prng(3000);
        std::uniform_int_distribution<std::uint64_t> pick(0, pages - 1), len(1, 2048);
        while (!stop) {
            const std::uint64_t from = pick(prng), n = std::min(pages - from, len(prng));
            auto r = conn->map_file(path, map_options(from * k_page, n * k_page, Access::ReadOnly));
            if (!r) {
                if (remap_errors++ == 0) remap_error = r.error().message;
                continue;
            }
            const auto* q = static_cast<const std::uint8_t*>(r.value().addr);
            for (std::uint64_t i = 0; i < n && !stop; i += 1 + i % 3) {
                if (!page_is_file(q + i * k_page, (from + i) * k_page, seed))
                    note("remapped region", q + i * k_page, from + i, 0);
                ++checked;
            }
            if (!conn->unmap(r.value()) && remap_errors++ == 0) remap_error = "unmap failed";
            ++remaps;
        }
    });
    pool.emplace_back([&] {  // the PrivateWritable region: its even pages written and checked
        std::mt19937_64 prng(4000);
        std::uniform_int_distribution<std::uint64_t> pick(0, pages / 2 - 1), op(0, 99), len(1, 256);
        std::vector<std::uint8_t> mine(pages, 0);  // 0: the file's bytes, else whose write
        std::uint64_t round = 1;
        while (!stop) {
            const std::uint64_t pg = 2 * pick(prng), o = op(prng);
            std::uint8_t* q = wp + pg * k_page;
            if (o < 40) {
                const std::uint64_t who = 1 + round++ % 200;
                write_tag(q, pg, who);
                mine[pg] = static_cast<std::uint8_t>(who);
                ++writes;
            } else if (o < 98) {
                if (mine[pg] ? !page_is_tag(q, pg, mine[pg]) : !page_is_file(q, pg * k_page, seed))
                    note("private writer", q, pg, mine[pg]);
                ++checked;
            } else {  // drop a range of private copies: the file's bytes again
                const std::uint64_t n = std::min(pages - pg, len(prng));
                ::madvise(q, n * k_page, MADV_DONTNEED);
                std::fill(mine.begin() + static_cast<std::ptrdiff_t>(pg),
                          mine.begin() + static_cast<std::ptrdiff_t>(pg + n), 0);
                ++madvises;
            }
        }
        // At the end every page it wrote still holds its write.
        for (std::uint64_t p = 0; p < pages; ++p)
            if (mine[p] && !page_is_tag(wp + p * k_page, p, mine[p]))
                note("private writer (final pass)", wp + p * k_page, p, mine[p]);
    });
    pool.emplace_back([&] {  // the PrivateWritable region's odd pages, never written: the file's
        std::mt19937_64 prng(5000);
        std::uniform_int_distribution<std::uint64_t> pick(0, pages / 2 - 1);
        while (!stop) {
            const std::uint64_t pg = 2 * pick(prng) + 1;
            if (!page_is_file(wp + pg * k_page, pg * k_page, seed))
                note("private region reader", wp + pg * k_page, pg, 0);
            ++checked;
        }
    });
    std::this_thread::sleep_for(run);
    stop = true;
    for (auto& t : pool) t.join();
    if (!ch.to_parent("joined")) return k_report_failed;
    // After the storm the regions still read right.
    for (std::uint64_t pg = 0; pg < pages; pg += 61) check_ro("after the storm", pg);

    const std::string report = "done " + std::to_string(checked) + " " + std::to_string(wrong) + " " +
                               std::to_string(remaps) + " " + std::to_string(remap_errors) + " " +
                               std::to_string(madvises) + " " + std::to_string(writes);
    if (!ch.to_parent(report) || !ch.to_parent(first_wrong) || !ch.to_parent(remap_error)) return k_report_failed;
    if (ch.from_parent() != "exit") return k_no_go;
    if (!conn->unmap(ro.value()) || !conn->unmap(pw.value())) return k_map_failed;
    return wrong ? k_wrong_byte : 0;
}

// Where the threads of process `pid` wait in the kernel: "wchan xN, ...".
std::string thread_states(pid_t pid)
{
    std::map<std::string, int> states;
    const std::string task = "/proc/" + std::to_string(pid) + "/task";
    if (DIR* d = ::opendir(task.c_str())) {
        while (dirent* e = ::readdir(d)) {
            if (e->d_name[0] == '.') continue;
            std::string w = slurp(task + "/" + e->d_name + "/wchan");
            ++states[w.empty() || w == "0" ? "running" : w];
        }
        ::closedir(d);
    }
    std::string out;
    for (const auto& [w, n] : states) out += (out.empty() ? "" : ", ") + w + " x" + std::to_string(n);
    return out;
}

// The last `n` lines of `text` that contain `what`.
std::string last_lines_with(const std::string& text, const std::string& what, std::size_t n)
{
    std::vector<std::string> found;
    std::size_t end = text.size();
    while (end > 0 && found.size() < n) {
        const std::size_t nl = text.rfind('\n', end - 1);
        const std::size_t from = nl == std::string::npos ? 0 : nl + 1;
        if (text.compare(from, end - from, "") != 0 && text.substr(from, end - from).find(what) != std::string::npos)
            found.push_back(text.substr(from, end - from));
        if (nl == std::string::npos) break;
        end = nl;
    }
    std::string out;
    for (auto it = found.rbegin(); it != found.rend(); ++it) out += *it + "\n";
    return out;
}

std::uint64_t count_lines_with(const std::string& text, const std::string& what)
{
    std::uint64_t n = 0;
    for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

}  // namespace

TEST_CASE("eviction racing faults, unmaps, MADV_DONTNEED and private writes never shows a wrong byte", "[cache][eviction][race]")
{
    // With the defaults the probation queue's minimum (2 x read-ahead x workers) is the
    // whole 8 MiB budget; with a 256 KiB read-ahead and two workers it is a quarter of it.
    const bool small_readahead = GENERATE(false, true);
    std::vector<std::string> args{"--memory-max", "8MiB"};
    if (small_readahead) args.insert(args.end(), {"--readahead-max", "262144", "--workers", "2"});
    INFO("pagerd options: --memory-max 8MiB" << (small_readahead ? " --readahead-max 262144 --workers 2" : ""));
    TempDir dir;
    const std::string path = dir.file("data");
    constexpr std::uint64_t size = 64 * k_mib, pages = size / k_page;
    constexpr std::uint64_t budget = 8 * k_mib;
    constexpr std::uint32_t seed = 91;
    constexpr auto run = 3s;
    make_file(path, size, seed);

    Channel ch;
    Children kids;
    kids.pids.push_back(start_child([&] { return eviction_storm(ch, path, size, seed, run); }));
    ch.parent_side();
    Daemon daemon(args);
    const auto s0 = daemon.status();
    REQUIRE(ch.to_child(daemon.socket()));
    // The threads stop after `run`, then the child reads a sample of the region again.
    std::string joined, report;
    const bool stopped = ch.from_child_within(run + 4s, joined) && joined == "joined";
    const bool answered = stopped && ch.from_child_within(5s, report);
    if (!answered) {
        // Stuck: what the child's threads wait for, and what the daemon does meanwhile.
        const std::string threads = thread_states(kids.pids[0]);
        const auto a = daemon.status();
        std::this_thread::sleep_for(1s);
        const auto b = daemon.status();
        const std::string log = daemon.log();
        ::kill(kids.pids[0], SIGKILL);  // before the daemon's stop, which waits for its workers
        ::waitpid(std::exchange(kids.pids[0], -1), nullptr, 0);
        FAIL((stopped ? "the storm's threads ended, but the reading after it did not end within 5 s"
                      : "the storm's threads did not end within " + std::to_string((run + 4s).count()) + " s")
             << "; the client's threads: " << threads << "\nin one second the daemon served " << b.faults - a.faults
             << " faults, installed " << b.pages_installed - a.pages_installed << " pages, loaded "
             << b.cache_loads - a.cache_loads << ", evicted " << b.cache_evictions - a.cache_evictions
             << ", refaults " << b.cache_refaults - a.cache_refaults << "\n" << figures(b) << "\ndaemon log: "
             << count_lines_with(log, "mapped 0 of") << " lines 'mapped 0 of ... from the cache'; the last of them:\n"
             << last_lines_with(log, "mapped 0 of", 6));
    }
    const std::string first_wrong = ch.from_child(), remap_error = ch.from_child();
    const auto s1 = settled(daemon);
    REQUIRE(ch.to_child("exit"));
    const int st = kids.wait(0);

    std::uint64_t checked = 0, wrong = 0, remaps = 0, remap_errors = 0, madvises = 0, writes = 0;
    const int parsed = std::sscanf(report.c_str(), "done %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &checked, &wrong, &remaps,
                                   &remap_errors, &madvises, &writes);
    WARN("eviction race, " << run.count() << " s: " << checked << " pages checked, " << wrong << " wrong, " << remaps
                           << " map/unmap cycles (" << remap_errors << " errors), " << madvises << " MADV_DONTNEED, "
                           << writes << " private page writes; child " << describe(st) << "\nstart: " << figures(s0)
                           << "\nend:   " << figures(s1));
    INFO("pagerd log (end):\n" << tail_of(daemon.log()));
    INFO("child report: " << report);
    REQUIRE(parsed == 6);
    INFO("first wrong page: " << first_wrong);
    CHECK(wrong == 0);
    INFO("first map/unmap error: " << remap_error);
    CHECK(remap_errors == 0);
    CHECK(remaps > 0);
    CHECK(checked > 0);
    CHECK(exited_with(st, 0));
    CHECK(s1.cache_evictions > 0);
    CHECK(s1.cache_loads > pages / 2);
    CHECK(s1.cache_files == 1);
    CHECK(s1.cache_bytes <= budget + 8 * k_mib);
    CHECK(daemon.alive());
    CHECK(daemon.wait_until([](const auto& s) { return s.cache_files == 0 && s.cache_bytes == 0; }));
}

namespace {

// In a child: maps the hot file and the scan file ReadOnly and does what the parent says,
// answering each order with "ok <wrong pages so far>":
//   "hot"       reads every page of the hot file, then MADV_DONTNEED on all of it (so that
//               the next round's touches reach the daemon's cache again);
//   "scan <c>"  reads chunk c of the scan file in order, then MADV_DONTNEED on it;
//   "exit"      unmaps and exits (0 when every page read was right).
int hot_and_scan(Channel& ch, const std::string& hot_path, std::uint64_t hot_size, std::uint32_t hot_seed,
                 const std::string& scan_path, std::uint64_t scan_size, std::uint32_t scan_seed, std::uint64_t chunk)
{
    ch.child_side();
    const std::string socket = ch.from_parent();
    if (socket.empty()) return k_no_go;
    auto conn = libclient::Connection::connect({socket, "hot-and-scan"});
    if (!conn) return k_connect_failed;
    auto hot = conn.value()->map_file(hot_path, map_options(0, hot_size, Access::ReadOnly));
    auto scan = conn.value()->map_file(scan_path, map_options(0, scan_size, Access::ReadOnly));
    if (!hot || !scan) return k_map_failed;
    auto* hp = static_cast<std::uint8_t*>(hot.value().addr);
    auto* sp = static_cast<std::uint8_t*>(scan.value().addr);
    std::uint64_t wrong = 0;
    for (std::string order = ch.from_parent(); order != "exit"; order = ch.from_parent()) {
        if (order == "hot") {
            for (std::uint64_t off = 0; off < hot_size; off += k_page) wrong += !page_is_file(hp + off, off, hot_seed);
            if (::madvise(hp, hot_size, MADV_DONTNEED) != 0) return k_report_failed;
        } else if (order.rfind("scan ", 0) == 0) {
            const std::uint64_t from = std::stoull(order.substr(5)) * chunk;
            for (std::uint64_t off = from; off < from + chunk; off += k_page) wrong += !page_is_file(sp + off, off, scan_seed);
            if (::madvise(sp + from, chunk, MADV_DONTNEED) != 0) return k_report_failed;
        } else {
            return k_no_go;  // "" too: the parent is gone
        }
        if (!ch.to_parent("ok " + std::to_string(wrong))) return k_report_failed;
    }
    return wrong ? k_wrong_byte : 0;
}

}  // namespace

TEST_CASE("a hot set survives a sequential scan of four times the budget", "[cache][eviction][2q]")
{
    // The daemon's workers (default: one per CPU) set how long pages loaded ahead stay on
    // probation (2 x read-ahead x workers): with 8 that is the whole 64 MiB budget.
    const unsigned workers = GENERATE(2u, 8u);
    INFO("pagerd --memory-max 64MiB --workers " << workers);
    TempDir dir;
    const std::string hot_path = dir.file("hot"), scan_path = dir.file("scan");
    constexpr std::uint64_t budget = 64 * k_mib;
    constexpr std::uint64_t hot_size = 16 * k_mib, hot_pages = hot_size / k_page;
    constexpr std::uint64_t scan_size = 4 * budget, scan_pages = scan_size / k_page;
    constexpr std::uint64_t chunk = 32 * k_mib, chunk_pages = chunk / k_page, chunks = scan_size / chunk;
    constexpr std::uint32_t hot_seed = 5, scan_seed = 6;
    make_file(hot_path, hot_size, hot_seed);
    make_file(scan_path, scan_size, scan_seed);

    Channel ch;
    Children kids;
    kids.pids.push_back(start_child(
        [&] { return hot_and_scan(ch, hot_path, hot_size, hot_seed, scan_path, scan_size, scan_seed, chunk); }));
    ch.parent_side();
    Daemon daemon({"--memory-max", "64MiB", "--workers", std::to_string(workers)});
    const auto s0 = daemon.status();
    REQUIRE(ch.to_child(daemon.socket()));

    // Each order is answered within a few seconds, unless the client is stuck on a fault.
    std::string said = "ok 0";
    auto order = [&](const std::string& what) {
        REQUIRE(ch.to_child(what));
        if (ch.from_child_within(5s, said) && said.rfind("ok ", 0) == 0) return;
        const std::string threads = thread_states(kids.pids[0]);
        const auto a = daemon.status();
        std::this_thread::sleep_for(1s);
        const auto b = daemon.status();
        ::kill(kids.pids[0], SIGKILL);  // before the daemon's stop, which waits for its workers
        ::waitpid(std::exchange(kids.pids[0], -1), nullptr, 0);
        FAIL("'" << what << "' not done within 5 s (the client said '" << said << "'); the client's threads: "
                 << threads << "\nin one second the daemon served " << b.faults - a.faults << " faults, installed "
                 << b.pages_installed - a.pages_installed << " pages, loaded " << b.cache_loads - a.cache_loads
                 << ", evicted " << b.cache_evictions - a.cache_evictions << ", refaults "
                 << b.cache_refaults - a.cache_refaults << "\n" << figures(b));
    };
    std::vector<std::uint64_t> hot_loads;  // per round
    auto hot_round = [&] {
        const auto before = settled(daemon);
        order("hot");
        const auto after = settled(daemon);
        hot_loads.push_back(after.cache_loads - before.cache_loads);
    };
    hot_round();
    std::uint64_t hot_so_far = hot_loads.back();
    for (std::uint64_t c = 0; c < chunks && hot_so_far <= 3 * hot_pages; ++c) {  // (past that it failed anyway)
        order("scan " + std::to_string(c));
        hot_round();
        hot_so_far += hot_loads.back();
    }
    const auto s1 = settled(daemon);
    REQUIRE(ch.to_child("exit"));
    const int st = kids.wait(0);

    // What a FIFO of the same budget would have loaded for the same touches (no read-ahead).
    std::uint64_t fifo_hot = 0;
    {
        std::deque<std::uint64_t> fifo;
        std::unordered_set<std::uint64_t> resident;
        const std::uint64_t cap = budget / k_page;
        auto load = [&](std::uint64_t key) {
            if (resident.count(key)) return false;
            fifo.push_back(key);
            resident.insert(key);
            while (fifo.size() > cap) {
                resident.erase(fifo.front());
                fifo.pop_front();
            }
            return true;
        };
        auto round = [&] {
            for (std::uint64_t pg = 0; pg < hot_pages; ++pg) fifo_hot += load(pg);
        };
        round();
        for (std::uint64_t c = 0; c < chunks; ++c) {
            for (std::uint64_t pg = c * chunk_pages; pg < (c + 1) * chunk_pages; ++pg) load((1ull << 40) + pg);
            round();
        }
    }
    std::uint64_t total_hot = 0;
    std::string rounds;
    for (auto n : hot_loads) {
        total_hot += n;
        rounds += std::to_string(n) + " ";
    }
    const std::uint64_t scan_loads = s1.cache_loads - s0.cache_loads - total_hot;
    const std::uint64_t scanned = (hot_loads.size() - 1) * chunk_pages;
    WARN("--workers " << workers << ": hot set of " << hot_pages << " pages, " << hot_loads.size()
                      << " rounds, between " << chunks << " scan chunks of " << mib(chunk) << ": hot pages loaded "
                      << total_hot << " times (" << static_cast<double>(total_hot) / hot_pages
                      << " per page; a FIFO: " << fifo_hot << ", " << static_cast<double>(fifo_hot) / hot_pages
                      << " per page); per round: " << rounds << "\nscan loads " << scan_loads << " for "
                      << scanned << " of " << scan_pages << " pages; client " << describe(st) << ", said '" << said << "'\nstart: "
                      << figures(s0) << "\nend:   " << figures(s1));
    INFO("pagerd log (end):\n" << tail_of(daemon.log()));
    CHECK(said == "ok 0");  // no wrong page
    CHECK(exited_with(st, 0));
    // The set-up makes a FIFO reload the hot set again and again...
    REQUIRE(fifo_hot >= 4 * hot_pages);
    // ... 2Q loads each hot page about twice: once, and once more after the scan first
    // pushed it out (then it is protected).
    CHECK(hot_loads.front() >= hot_pages);
    CHECK(total_hot <= 2 * hot_pages + hot_pages / 8);
    CHECK(s1.cache_refaults > 0);
    CHECK(s1.cache_evictions > 0);
    CHECK(s1.cache_bytes <= budget + 16 * k_mib);
    CHECK(daemon.alive());
}

TEST_CASE("prefetch All fills the cache and the region", "[cache][prefetch]")
{
    TempDir dir;
    const std::string path = dir.file("data");
    constexpr std::uint64_t size = 32 * k_mib, pages = size / k_page;
    constexpr std::uint32_t seed = 123;
    make_file(path, size, seed);

    Channel ch;
    Children kids;
    kids.pids.push_back(start_child([&] { return shared_reader(ch, path, size, seed); }));
    ch.parent_side();

    Daemon daemon({"--memory-max", "256MiB"});
    auto conn = daemon.connect("prefetch-all");
    const auto s0 = daemon.status();
    const auto r = map_or_fail(*conn, path, map_options(0, size, Access::ReadOnly, Prefetch::All));
    auto w = conn->prefetch(r.addr, r.size, true, 20000);
    if (!w) FAIL("waited prefetch: " << w.error().message);
    const auto s1 = settled(daemon);
    const std::uint64_t shmem = proc_status_bytes(::getpid(), "RssShmem");
    // The whole region reads right without one fault: the fill mapped it all.
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    std::uint64_t bad = 0;
    for (std::uint64_t pg = 0; pg < pages; ++pg) bad += !page_is_file(p + pg * k_page, pg * k_page, seed);
    const auto s2 = settled(daemon);

    // A second client (a child) reads it all: no load, all from the cache.
    REQUIRE(ch.to_child(daemon.socket()));
    const std::string said = ch.from_child();
    const auto s3 = settled(daemon);
    CHECK(ch.to_child("exit"));
    const int st = kids.wait(0);

    WARN("after the waited fill: " << figures(s1) << " (this process's RssShmem " << mib(shmem)
                                   << ")\nafter reading it: " << figures(s2) << "\nafter the second client: "
                                   << figures(s3) << "\nsecond client: " << describe(st) << ", said '" << said << "'");
    INFO("pagerd log (end):\n" << tail_of(daemon.log()));
    CHECK(s1.cache_loads - s0.cache_loads == pages);
    CHECK(s1.cache_bytes == size);
    CHECK(s1.cache_files == 1);
    CHECK(bad == 0);
    CHECK(s2.faults == s1.faults);
    CHECK(s2.cache_loads == s1.cache_loads);
    CHECK(said == "read");
    CHECK(exited_with(st, 0));
    CHECK(s3.cache_loads == s1.cache_loads);
    CHECK(s3.cache_hits - s2.cache_hits >= pages);
    CHECK(daemon.alive());
}

TEST_CASE("the daemon lists its caches per file with what they hold and who maps them", "[cache][status]")
{
    TempDir dir;
    const std::uint64_t size = 4 * 1024 * 1024, half = size / 2;
    make_file(dir.file("a"), size, 71);
    make_file(dir.file("b"), size, 72);
    Daemon daemon;
    auto one = daemon.connect("one");
    auto two = daemon.connect("two");
    REQUIRE(one->caches().ok());
    CHECK(one->caches()->empty());  // no region: no cache
    auto ra = one->map_file(dir.file("a"), {0, size, Access::ReadOnly, libclient::Tracking::Auto, nullptr, Prefetch::None});
    auto rb = one->map_file(dir.file("b"), {0, size, Access::ReadOnly, libclient::Tracking::Auto, nullptr, Prefetch::None});
    auto ra2 = two->map_file(dir.file("a"), {0, half, Access::PrivateWritable, libclient::Tracking::Auto, nullptr, Prefetch::None});
    REQUIRE(ra.ok());
    REQUIRE(rb.ok());
    REQUIRE(ra2.ok());
    const auto* pa = static_cast<const volatile std::uint8_t*>(ra->addr);
    for (std::uint64_t off = 0; off < half; off += 4096) (void)pa[off];  // half of a, nothing of b
    struct stat sa{}, sb{};
    REQUIRE(::stat(dir.file("a").c_str(), &sa) == 0);
    REQUIRE(::stat(dir.file("b").c_str(), &sb) == 0);
    auto list = two->caches();
    REQUIRE(list.ok());
    REQUIRE(list->size() == 2);
    const libclient::CacheInfo* a = nullptr;
    const libclient::CacheInfo* b = nullptr;
    for (const auto& k : *list) {
        if (k.dev == sa.st_dev && k.ino == sa.st_ino) a = &k;
        if (k.dev == sb.st_dev && k.ino == sb.st_ino) b = &k;
    }
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    CHECK(a->size == size);
    CHECK(a->resident == half);  // what the touches loaded (prefetch none: nothing more)
    CHECK(a->clients == 2);
    CHECK(a->regions == 2);
    CHECK(b->resident == 0);
    CHECK(b->clients == 1);
    CHECK(b->regions == 1);
    // pagerctl shows the same list.
    const auto out = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status", "--json"});
    CHECK(exited_with(out.status, 0));
    CHECK_THAT(out.out, Catch::Contains("\"cache_list\":[{\"dev\":"));
    CHECK_THAT(out.out, Catch::Contains("\"resident\":" + std::to_string(half) + ",\"clients\":2,\"regions\":2}"));
    REQUIRE(one->unmap(ra.value()).ok());
    REQUIRE(one->unmap(rb.value()).ok());
    REQUIRE(two->unmap(ra2.value()).ok());
    CHECK(daemon.wait_until([](const auto& s) { return s.cache_files == 0 && s.cache_bytes == 0; }));
    CHECK(two->caches()->empty());
}
