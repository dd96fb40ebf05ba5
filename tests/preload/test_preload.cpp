// libpagerd-preload.so and pagerd-run with mapper, a program of ours that uses libc's mmap
// and knows nothing of pagerd: its output under pagerd-run equals its output without, and
// the daemon's counters show the file's pages came through it (or, for what falls back,
// that they did not).
#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

#include "preload_helpers.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace pagerd::test::preload;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_mib = 1024 * 1024;

std::uint64_t loaded(const libclient::Status& s) { return std::max(s.bytes_read, s.cache_loads * 4096); }

// mapper's steps without pagerd-run, then with it; both must exit 0 with the same output.
struct Both {
    CommandResult plain, paged;
};
Both run_both(const Daemon& daemon, const std::vector<std::string>& steps, const std::vector<std::string>& options = {},
              const std::vector<std::string>& env = {})
{
    Both b;
    b.plain = run_command(mapper_with(steps), env);
    b.paged = run_command(under(daemon.socket(), options, mapper_with(steps)), env);
    INFO("without: " << b.plain.out << b.plain.err << "\nwith: " << b.paged.out << b.paged.err);
    REQUIRE(exited_with(b.plain.status, 0));
    REQUIRE(exited_with(b.paged.status, 0));
    CHECK(b.paged.out == b.plain.out);
    return b;
}

// The steps without their "wait"s, and an output without its "wait" lines: the same
// program run to its end at once.
std::vector<std::string> no_waits(std::vector<std::string> steps)
{
    steps.erase(std::remove(steps.begin(), steps.end(), "wait"), steps.end());
    return steps;
}
std::string no_waits(std::string out)
{
    for (std::size_t at; (at = out.find("wait\n")) != std::string::npos;) out.erase(at, 5);
    return out;
}

std::string sum_line(int slot, std::uint64_t sum) { return "sum " + std::to_string(slot) + " " + std::to_string(sum) + "\n"; }

}  // namespace

TEST_CASE("a read-only mapping is served by the daemon and sums as without it", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 8 * k_mib, 11);
    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = daemon.status();
    const auto b = run_both(daemon, {"open:" + data + ":ro", "map:0:0:all:r:private", "sum:0"});
    CHECK(b.paged.out == "open: ok\nmap 0: ok\n" + sum_line(0, byte_sum(data)));
    CHECK(taken(b.paged.err, data));
    const auto after = daemon.status();
    CHECK(after.faults > before.faults);
    CHECK(loaded(after) - loaded(before) >= 8 * k_mib);

    // While it runs: a region of the mapper's, and the daemon's cache of the file.
    Interactive run(under(daemon.socket(), {}, mapper_with({"open:" + data + ":ro", "map:0:0:all:r:shared", "sum:0", "wait"})));
    run.until_wait();
    CHECK(regions_of(*conn, run.pid()) == 1);
    struct stat st{};
    REQUIRE(::stat(data.c_str(), &st) == 0);
    auto caches = conn->caches();
    REQUIRE(caches.ok());
    bool cached = false;
    for (const auto& c : caches.value())
        cached |= c.dev == st.st_dev && c.ino == st.st_ino && c.resident >= 8 * k_mib;
    CHECK(cached);
    run.resume();
    CHECK(exited_with(run.finish().status, 0));
}

TEST_CASE("a private writable mapping keeps its writes to itself", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 12);
    const auto original = read_file(data);
    Daemon daemon;
    const auto b = run_both(daemon, {"open:" + data + ":ro", "map:0:0:all:rw:private", "write:0:8192:hello",
                                     "peek:0:8192:5", "sum:0"});
    CHECK(b.paged.out.find("peek 0 8192: 68 65 6c 6c 6f\n") != std::string::npos);
    CHECK(taken(b.paged.err, data));
    CHECK(read_file(data) == original);
    CHECK(daemon.status().faults > 0);
}

TEST_CASE("a shared writable mapping reaches the file at msync", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 13);
    Daemon daemon;
    Interactive run(under(daemon.socket(), {}, mapper_with({"open:" + data + ":rw", "map:0:0:all:rw:shared",
                                                             "write:0:5000:pagerd", "msync:0", "wait"})));
    CHECK(run.until_wait() == "open: ok\nmap 0: ok\nwrite 0: ok\nmsync 0: ok\nwait\n");
    // The mapping is still there: only the flush of msync can have put the bytes in the file.
    const auto bytes = read_file(data);
    CHECK(std::string(bytes.begin() + 5000, bytes.begin() + 5006) == "pagerd");
    run.resume();
    const auto r = run.finish();
    CHECK(exited_with(r.status, 0));
    CHECK(taken(r.err, data));
    // The same steps without pagerd give the same output.
    CHECK(run_command(mapper_with({"open:" + data + ":rw", "map:0:0:all:rw:shared", "write:0:5000:pagerd",
                                   "msync:0"})).out == "open: ok\nmap 0: ok\nwrite 0: ok\nmsync 0: ok\n");
}

TEST_CASE("msync of a shared mapping fails with EIO once the daemon is gone", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 2 * k_mib, 28);
    Daemon daemon;
    Interactive run(under(daemon.socket(), {}, mapper_with({"open:" + data + ":rw", "map:0:0:all:rw:shared", "sum:0",
                                                             "write:0:0:lost", "wait", "msync:0", "msync:0:async"})));
    run.until_wait();
    daemon.kill_hard();
    run.resume();
    const auto r = run.finish();
    CHECK(r.out == "open: ok\nmap 0: ok\n" + sum_line(0, byte_sum(data)) + "write 0: ok\nwait\nmsync 0: EIO\nmsync 0: ok\n");
    CHECK(taken(r.err, data));
}

TEST_CASE("munmap of whole and partial mappings is followed by the daemon", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 8 * k_mib, 14);
    Daemon daemon;
    auto conn = daemon.connect();
    const std::string half = std::to_string(4 * k_mib), all = std::to_string(8 * k_mib);
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "map:1:0:all:r:private", "wait",
                                         "munmap:1:0:" + all, "wait",
                                         "munmap:0:0:" + half, "sum:0:" + half + ":" + half, "wait",
                                         "munmap:0:" + half + ":" + half, "wait"};
    Interactive run(under(daemon.socket(), {}, mapper_with(steps)));
    run.until_wait();
    CHECK(regions_of(*conn, run.pid()) == 2);
    run.resume();
    run.until_wait();  // the whole of slot 1 unmapped
    CHECK(regions_of(*conn, run.pid()) == 1);
    run.resume();
    CHECK(run.until_wait() == "munmap 0: ok\n" + sum_line(0, byte_sum(data, 4 * k_mib)) + "wait\n");
    CHECK(regions_of(*conn, run.pid()) == 1);  // half of slot 0 left
    run.resume();
    run.until_wait();  // the rest of slot 0: nothing left, forgotten
    CHECK(regions_of(*conn, run.pid()) == 0);
    run.resume();
    const auto r = run.finish();
    CHECK(exited_with(r.status, 0));
    CHECK(no_waits(r.out) == run_command(mapper_with(no_waits(steps))).out);

    // More mappings than the library's table holds, each unmapped in two halves: every one
    // is taken, so each left the table when its last half went.
    const std::string small = dir.file("small");
    make_file(small, 8 * 4096, 24);
    const auto b = run_both(daemon, {"halves:1100:" + small}, {"--min-size", "4K"});
    CHECK(b.paged.out == "halves ok " + std::to_string(byte_sum(small, 4 * 4096)) + "\n");
    const auto d = decisions(b.paged.err, small);
    CHECK(d.size() == 1100);
    CHECK(std::count(d.begin(), d.end(), "taken") == 1100);
}

TEST_CASE("mremap moves shrinks and grows a taken mapping", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 8 * k_mib, 15);
    Daemon daemon;
    auto conn = daemon.connect();
    const std::string half = std::to_string(4 * k_mib), all = std::to_string(8 * k_mib);
    // Moved before any page is touched: the daemon serves the faults at the new address.
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "mremap:0:" + all + ":fixed",
                                         "sum:0", "mremap:0:" + half + ":none", "sum:0",
                                         "mremap:0:" + all + ":maymove", "sum:0", "wait"};
    Interactive run(under(daemon.socket(), {}, mapper_with(steps)));
    const std::string expect = "open: ok\nmap 0: ok\nmremap 0: ok\n" + sum_line(0, byte_sum(data)) + "mremap 0: ok\n" +
                               sum_line(0, byte_sum(data, 0, 4 * k_mib)) + "mremap 0: ok\n" +
                               sum_line(0, byte_sum(data)) + "wait\n";
    CHECK(run.until_wait() == expect);
    CHECK(regions_of(*conn, run.pid()) == 1);  // the grown one; the old one is gone
    run.resume();
    const auto r = run.finish();
    CHECK(exited_with(r.status, 0));
    CHECK(taken(r.err, data));
    CHECK(no_waits(r.out) == run_command(mapper_with(no_waits(steps))).out);
    CHECK(daemon.status().faults > 0);

    // Growing a private writable mapping would lose its writes; growing in place is refused.
    const auto grown = run_command(under(daemon.socket(), {}, mapper_with({"open:" + data + ":ro", "map:0:0:" + half + ":rw:private",
                                                                           "mremap:0:" + all + ":maymove", "mremap:0:" + all + ":none"})));
    CHECK(grown.out == "open: ok\nmap 0: ok\nmremap 0: ENOMEM\nmremap 0: ENOMEM\n");
}

TEST_CASE("anonymous memory put over a taken mapping with MAP_FIXED is no longer taken", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 27);
    Daemon daemon;
    auto conn = daemon.connect();
    // Grown afterwards, the anonymous memory stays what it is (the library would map the
    // file anew if it still took the range for its own).
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "sum:0", "anonfixed:0", "wait",
                                         "mremap:0:" + std::to_string(8 * k_mib) + ":maymove", "sum:0"};
    Interactive run(under(daemon.socket(), {}, mapper_with(steps)));
    run.until_wait();
    CHECK(regions_of(*conn, run.pid()) == 0);
    run.resume();
    const auto r = run.finish();
    CHECK(exited_with(r.status, 0));
    CHECK(taken(r.err, data));
    CHECK(no_waits(r.out) == run_command(mapper_with(no_waits(steps))).out);
    CHECK(r.out.find(sum_line(0, 4 * k_mib)) != std::string::npos);
}

TEST_CASE("madvise WILLNEED and MAP_POPULATE load a taken range before it is touched", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 8 * k_mib, 16);
    Daemon daemon;
    Interactive run(under(daemon.socket(), {}, mapper_with({"open:" + data + ":ro", "map:0:0:all:r:private", "willneed:0",
                                                             "wait", "sum:0"})));
    CHECK(run.until_wait() == "open: ok\nmap 0: ok\nwillneed 0: ok\nwait\n");
    CHECK(daemon.wait_until([](const libclient::Status& s) { return loaded(s) >= 8 * k_mib; }, 10s));
    CHECK(daemon.status().faults == 0);
    run.resume();
    const auto r = run.finish();
    CHECK(r.out == "open: ok\nmap 0: ok\nwillneed 0: ok\nwait\n" + sum_line(0, byte_sum(data)));
    CHECK(taken(r.err, data));

    // MAP_POPULATE: the daemon loads the whole region in the background.
    const std::string other = dir.file("other");
    make_file(other, 8 * k_mib, 26);
    const auto before = loaded(daemon.status());
    Interactive populated(under(daemon.socket(), {}, mapper_with({"open:" + other + ":ro", "map:0:0:all:r:private:populate", "wait"})));
    CHECK(populated.until_wait() == "open: ok\nmap 0: ok\nwait\n");
    CHECK(daemon.wait_until([&](const libclient::Status& s) { return loaded(s) >= before + 8 * k_mib; }, 10s));
    populated.resume();
    CHECK(taken(populated.finish().err, other));
}

TEST_CASE("mappings pagerd does not take fall back and say why", "[preload][fallback]")
{
    TempDir dir;
    const std::string big = dir.file("big.bin"), small = dir.file("small.bin");
    const std::string shm = "/dev/shm/pagerd-preload-test-" + std::to_string(::getpid());
    make_file(big, 4 * k_mib, 17);
    make_file(small, 100 * 1024, 18);
    make_file(shm, 4 * k_mib, 25);
    struct Unlink {
        std::string path;
        ~Unlink() { ::unlink(path.c_str()); }
    } unlink_shm{shm};
    Daemon daemon;
    struct Case {
        std::string name;
        std::vector<std::string> steps, options;
        std::string path, reason;
    };
    const std::vector<Case> cases{
        {"small file", {"open:" + small + ":ro", "map:0:0:all:r:private", "sum:0"}, {}, small, "smaller than the minimum size"},
        {"glob", {"open:" + big + ":ro", "map:0:0:all:r:private", "sum:0"}, {"--map", "*.npy"}, big, "does not match PAGERD_MAP"},
        {"coherence", {"open:" + big + ":rw", "pwrite:4096:zz", "map:0:0:all:r:shared", "sum:0", "pwrite:4096:yy",
                       "peek:0:4096:2", "pwrite:4096:zz"}, {}, big,
         "descriptor open for writing"},
        {"exec", {"open:" + big + ":ro", "map:0:0:all:rx:private", "sum:0"}, {}, big, "PROT_EXEC"},
        {"fixed", {"anon:0:" + std::to_string(4 * k_mib), "open:" + big + ":ro", "map:0:0:all:r:private:fixed", "sum:0"}, {}, big,
         "MAP_FIXED"},
        {"memory", {"open:" + shm + ":rw", "map:0:0:all:rw:shared", "sum:0"}, {}, shm, "a file in memory"},
    };
    for (const auto& c : cases) {
        INFO(c.name);
        const auto b = run_both(daemon, c.steps, c.options);
        CHECK(b.paged.out.find(sum_line(0, byte_sum(c.path))) != std::string::npos);
        CHECK(fallback_reason(b.paged.err, c.path).rfind(c.reason, 0) == 0);
        CHECK_FALSE(taken(b.paged.err, c.path));
    }
    // The program's own pwrite shows in its mapping at once (it would not through pagerd).
    CHECK(run_command(mapper_with(cases[2].steps)).out.find("peek 0 4096: 79 79\n") != std::string::npos);
    const auto s = daemon.status();
    CHECK(s.faults == 0);
    CHECK(loaded(s) == 0);
    // The glob that matches takes it; --min-size lowers the bar for the small file.
    CHECK(taken(run_command(under(daemon.socket(), {"--map", "*/big.bin"}, mapper_with(cases[1].steps))).err, big));
    CHECK(taken(run_command(under(daemon.socket(), {"--min-size", "64K"}, mapper_with(cases[0].steps))).err, small));
}

TEST_CASE("without a daemon the program runs unchanged and quickly", "[preload][fallback]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 19);
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "map:1:0:all:r:private", "sum:0", "sum:1"};
    const auto start = std::chrono::steady_clock::now();
    const auto r = run_command(under(dir.file("no-daemon.sock"), {}, mapper_with(steps)));
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    CHECK(exited_with(r.status, 0));
    CHECK(r.out == run_command(mapper_with(steps)).out);
    const auto d = decisions(r.err, data);
    REQUIRE(d.size() == 2);
    CHECK(d[0].rfind("fell back: cannot connect to pagerd", 0) == 0);
    CHECK(d[1].find("(not retried)") != std::string::npos);
}

TEST_CASE("with the daemon stopped the program finishes within the timeout", "[preload][fallback]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 20);
    Daemon daemon;
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "map:1:0:all:r:private", "sum:0", "sum:1"};
    REQUIRE(::kill(daemon.pid(), SIGSTOP) == 0);
    const auto start = std::chrono::steady_clock::now();
    const auto r = run_command(under(daemon.socket(), {"--timeout-ms", "1500"}, mapper_with(steps)));
    const auto took = std::chrono::steady_clock::now() - start;
    ::kill(daemon.pid(), SIGCONT);
    CHECK(took >= 1400ms);  // one timeout, not two
    CHECK(took < 2800ms);
    CHECK(exited_with(r.status, 0));
    CHECK(r.out == run_command(mapper_with(steps)).out);
    const auto d = decisions(r.err, data);
    REQUIRE(d.size() == 2);
    CHECK(d[0].find("did not answer") != std::string::npos);
}

TEST_CASE("a library constructor maps a file before main", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 2 * k_mib, 21);
    Daemon daemon;
    const auto b = run_both(daemon, {}, {}, {"MAPPER_CTOR_FILE=" + data});
    CHECK(b.paged.out == "ctor sum " + std::to_string(byte_sum(data)) + "\n");
    CHECK(taken(b.paged.err, data));
    CHECK(daemon.status().faults > 0);
}

TEST_CASE("eight threads map and unmap at once", "[preload]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 2 * k_mib, 22);
    Daemon daemon;
    const auto b = run_both(daemon, {"threads:8:10:" + data});
    CHECK(b.paged.out == "threads ok " + std::to_string(byte_sum(data)) + "\n");
    const auto d = decisions(b.paged.err, data);
    CHECK(d.size() == 80);
    CHECK(std::count(d.begin(), d.end(), "taken") == 80);
    CHECK(daemon.status().faults > 0);
}

TEST_CASE("a forked child reads inherited mappings and maps new ones", "[preload][fork]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 23);
    Daemon daemon;
    const std::string half = std::to_string(2 * k_mib);
    const auto b = run_both(daemon, {"open:" + data + ":ro", "map:0:0:all:r:private", "sum:0:0:" + half, "fork",
                                     "sum:0", "map:1:0:all:r:private", "sum:1", "munmap:0:0:" + half, "munmap:1:0:" + half});
    CHECK(b.paged.out == "open: ok\nmap 0: ok\n" + sum_line(0, byte_sum(data, 0, 2 * k_mib)) + sum_line(0, byte_sum(data)) +
                             "map 1: ok\n" + sum_line(1, byte_sum(data)) + "munmap 0: ok\nmunmap 1: ok\nchild exit 0\n");
    const auto d = decisions(b.paged.err, data);
    CHECK(std::count(d.begin(), d.end(), "taken") == 2);  // the parent's, and the child's own
}

namespace {

// argv run as nobody (uid and gid 65534, no groups): a client without CAP_SYS_PTRACE, whose
// connection does not fork_inherits(). The daemon's socket and the files must be reachable.
std::vector<std::string> as_nobody(std::vector<std::string> argv)
{
    argv.insert(argv.begin(), {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"});
    return argv;
}

void open_to_nobody(const Daemon& daemon, const TempDir& dir)
{
    ::chmod(dir.path().c_str(), 0755);
    const std::string sock_dir = daemon.socket().substr(0, daemon.socket().rfind('/'));
    ::chmod(sock_dir.c_str(), 0755);
}

std::size_t count_of(const std::vector<std::string>& lines, const std::string& line)
{
    return static_cast<std::size_t>(std::count(lines.begin(), lines.end(), line));
}

}  // namespace

// Without UFFD_FEATURE_EVENT_FORK (no CAP_SYS_PTRACE) libclient's regions are not in a
// forked child at all: the library maps them again there. As root the kernel and the
// daemon give the child the regions, and the library does nothing at the fork.
TEST_CASE("a forked child of a client without fork support gets the mappings back", "[preload][fork]")
{
    TempDir dir;
    const std::string ro = dir.file("ro"), sh = dir.file("shared");
    make_file(ro, 4 * k_mib, 29);
    ::chmod(ro.c_str(), 0644);
    Daemon daemon;
    open_to_nobody(daemon, dir);
    // Slot 0 read-only and cut in two by munmap (two pieces of one region); slot 1 shared,
    // written by the parent before the fork and by the child (seen by the parent after).
    const std::uint64_t hole = k_mib, after = k_mib + 4096;
    const std::vector<std::string> steps{
        "open:" + ro + ":ro", "map:0:0:all:r:private", "sum:0:0:" + std::to_string(2 * k_mib),
        "open:" + sh + ":rw", "map:1:0:all:rw:shared", "write:1:100:parent", "munmap:0:" + std::to_string(hole) + ":4096",
        "fork", "sum:0:0:" + std::to_string(hole), "sum:0:" + std::to_string(after) + ":" + std::to_string(4 * k_mib - after),
        "peek:1:100:6", "write:1:5000:child", "msync:1", "parent", "peek:1:5000:5", "msync:1"};
    const std::string expect = "open: ok\nmap 0: ok\n" + sum_line(0, byte_sum(ro, 0, 2 * k_mib)) +
                               "open: ok\nmap 1: ok\nwrite 1: ok\nmunmap 0: ok\n" + sum_line(0, byte_sum(ro, 0, hole)) +
                               sum_line(0, byte_sum(ro, after)) + "peek 1 100: 70 61 72 65 6e 74\nwrite 1: ok\nmsync 1: ok\n" +
                               "child exit 0\npeek 1 5000: 63 68 69 6c 64\nmsync 1: ok\n";
    auto fresh_shared = [&] {
        make_file(sh, 4 * k_mib, 30);
        REQUIRE(::chown(sh.c_str(), 65534, 65534) == 0);
    };
    auto check_file = [&] {
        const auto bytes = read_file(sh);
        CHECK(std::string(bytes.begin() + 100, bytes.begin() + 106) == "parent");
        CHECK(std::string(bytes.begin() + 5000, bytes.begin() + 5005) == "child");
    };
    for (const bool nobody : {true, false}) {
        INFO((nobody ? "as nobody" : "as root"));
        fresh_shared();
        const auto plain = run_command(nobody ? as_nobody(mapper_with(steps)) : mapper_with(steps));
        CHECK(plain.out == expect);
        fresh_shared();
        const auto paged = run_command(nobody ? as_nobody(under(daemon.socket(), {}, mapper_with(steps)))
                                              : under(daemon.socket(), {}, mapper_with(steps)));
        INFO("with pagerd: " << paged.out << paged.err);
        CHECK(exited_with(paged.status, 0));
        CHECK(paged.out == expect);
        check_file();
        const auto d_ro = decisions(paged.err, ro), d_sh = decisions(paged.err, sh);
        CHECK(count_of(d_ro, "taken") == 1);
        CHECK(count_of(d_sh, "taken") == 1);
        // As nobody, each piece is mapped again in the child; as root, nothing is.
        CHECK(count_of(d_ro, "in the child: mapped again") == (nobody ? 2u : 0u));
        CHECK(count_of(d_sh, "in the child: mapped again") == (nobody ? 1u : 0u));
        CHECK(d_ro.size() == (nobody ? 3u : 1u));
        CHECK(d_sh.size() == (nobody ? 2u : 1u));
    }
    CHECK(daemon.alive());
}

TEST_CASE("a client without fork support does not take private writable mappings", "[preload][fork]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 31);
    ::chmod(data.c_str(), 0644);
    Daemon daemon;
    open_to_nobody(daemon, dir);
    // The child sees the parent's private write: only the kernel's fork can give it that.
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:rw:private", "write:0:8192:hello", "fork",
                                         "peek:0:8192:5", "sum:0"};
    const auto plain = run_command(mapper_with(steps));
    REQUIRE(exited_with(plain.status, 0));
    CHECK(plain.out.find("peek 0 8192: 68 65 6c 6c 6f\n") != std::string::npos);
    CHECK(plain.out.find("child exit 0\n") != std::string::npos);
    const auto nobody = run_command(as_nobody(under(daemon.socket(), {}, mapper_with(steps))));
    INFO("as nobody: " << nobody.out << nobody.err);
    CHECK(exited_with(nobody.status, 0));
    CHECK(nobody.out == plain.out);
    CHECK_FALSE(taken(nobody.err, data));
    CHECK(fallback_reason(nobody.err, data).rfind("MAP_PRIVATE with PROT_WRITE", 0) == 0);
    // Root's child keeps the region, writes and all: taken.
    const auto root = run_command(under(daemon.socket(), {}, mapper_with(steps)));
    INFO("as root: " << root.out << root.err);
    CHECK(exited_with(root.status, 0));
    CHECK(root.out == plain.out);
    CHECK(taken(root.err, data));
}

TEST_CASE("a forked child of a client without fork support gets the kernel's mapping once the daemon is gone",
          "[preload][fork]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 32);
    ::chmod(data.c_str(), 0644);
    Daemon daemon;
    open_to_nobody(daemon, dir);
    // The parent loads every page before the daemon goes; its child, whose regions the
    // daemon cannot serve, reads the file through the kernel's mapping of it.
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "sum:0", "wait", "fork", "sum:0"};
    Interactive run(as_nobody(under(daemon.socket(), {}, mapper_with(steps))));
    run.until_wait();
    daemon.kill_hard();
    run.resume();
    const auto r = run.finish();
    INFO(r.out << r.err);
    CHECK(exited_with(r.status, 0));
    CHECK(r.out == "open: ok\nmap 0: ok\n" + sum_line(0, byte_sum(data)) + "wait\n" + sum_line(0, byte_sum(data)) +
                       "child exit 0\n");
    const auto d = decisions(r.err, data);
    REQUIRE(d.size() == 2);
    CHECK(d[0] == "taken");
    CHECK(d[1].rfind("in the child: mapped by the kernel: ", 0) == 0);
}

TEST_CASE("a forked child of a client without fork support that execs leaves nothing behind", "[preload][fork]")
{
    TempDir dir;
    const std::string data = dir.file("data");
    make_file(data, 4 * k_mib, 33);
    ::chmod(data.c_str(), 0644);
    Daemon daemon;
    open_to_nobody(daemon, dir);
    const std::vector<std::string> steps{"open:" + data + ":ro", "map:0:0:all:r:private", "fork", "exec:/bin/true", "parent",
                                         "sum:0", "wait"};
    Interactive run(as_nobody(under(daemon.socket(), {}, mapper_with(steps))));
    CHECK(run.until_wait() == "open: ok\nmap 0: ok\nchild exit 0\n" + sum_line(0, byte_sum(data)) + "wait\n");
    // The child mapped the region again, then exec'd: the daemon let go of its connection.
    // Clients: the mapper and the connection asking.
    CHECK(daemon.wait_until([](const libclient::Status& s) { return s.clients == 2 && s.regions == 1; }, 10s));
    run.resume();
    const auto r = run.finish();
    INFO(r.out << r.err);
    CHECK(exited_with(r.status, 0));
    const auto d = decisions(r.err, data);
    CHECK(count_of(d, "taken") == 1);
    CHECK(count_of(d, "in the child: mapped again") == 1);
}

TEST_CASE("pagerd-run reports its argument errors", "[preload][run]")
{
    auto r = run_command({pagerd_run()});
    CHECK(exited_with(r.status, 125));
    CHECK(r.err.find("no PROGRAM") != std::string::npos);
    r = run_command({pagerd_run(), "--min-size", "12Q", "--", "/bin/true"});
    CHECK(exited_with(r.status, 125));
    CHECK(r.err.find("--min-size '12Q' is not a size") != std::string::npos);
    r = run_command({pagerd_run(), "--map", "a:b", "/bin/true"});
    CHECK(exited_with(r.status, 125));
    r = run_command({pagerd_run(), "--bogus", "/bin/true"});
    CHECK(exited_with(r.status, 125));
    CHECK(r.err.find("unknown option --bogus") != std::string::npos);
    r = run_command({pagerd_run(), "--", "/nonexistent/program"});
    CHECK(exited_with(r.status, 127));
    CHECK(r.err.find("cannot run /nonexistent/program") != std::string::npos);
    TempDir dir;
    make_file(dir.file("not-executable"), 10);
    r = run_command({pagerd_run(), "--", dir.file("not-executable")});
    CHECK(exited_with(r.status, 126));
    r = run_command({pagerd_run(), "--", "/bin/true"}, {"PAGERD_PRELOAD_LIB=/nonexistent/libpagerd-preload.so"});
    CHECK(exited_with(r.status, 125));
    CHECK(r.err.find("libpagerd-preload.so not found") != std::string::npos);
    r = run_command({pagerd_run(), "--help"});
    CHECK(exited_with(r.status, 0));
    CHECK(r.out.find("Default: 1M") != std::string::npos);
}

TEST_CASE("pagerd-run sets the library and its variables for the program", "[preload][run]")
{
    const auto r = run_command({pagerd_run(), "--map", "*.npy", "--map", "/data/*", "--min-size", "2M", "--socket", "/tmp/s.sock",
                                "--timeout-ms", "500", "--debug", "/usr/bin/env"},
                               {"LD_PRELOAD=/lib/other.so"});
    REQUIRE(exited_with(r.status, 0));
    CHECK(r.out.find("\nLD_PRELOAD=" + std::string(PAGERD_PRELOAD_LIB) + ":/lib/other.so\n") != std::string::npos);
    CHECK(r.out.find("\nPAGERD_MAP=*.npy:/data/*\n") != std::string::npos);
    CHECK(r.out.find("\nPAGERD_MIN_SIZE=2097152\n") != std::string::npos);
    CHECK(r.out.find("\nPAGERD_SOCKET=/tmp/s.sock\n") != std::string::npos);
    CHECK(r.out.find("\nPAGERD_TIMEOUT_MS=500\n") != std::string::npos);
    CHECK(r.out.find("\nPAGERD_DEBUG=1\n") != std::string::npos);
}
