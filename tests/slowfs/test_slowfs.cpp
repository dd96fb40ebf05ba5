// slowfs, the slow FUSE store of the integration tests, against its own promises: passthrough,
// a delay on every write request and none on reads, a gate that holds writes (pwrite and
// io_uring) until it is opened, and the counters in .slowfs-stats.
#include "slowfs_mount.hpp"

#include <catch2/catch.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using pagerd::test::SlowFs;
using pagerd::test::SlowFsStats;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kPage = 4096;

// /tmp/slowfs-test-XXXXXX with backing/ and mnt/; declared before the SlowFs, so it is
// removed after the unmount. Never descends into mnt.
class Scratch {
public:
    Scratch()
    {
        char tmpl[] = "/tmp/slowfs-test-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        m_dir = tmpl;
    }
    ~Scratch()
    {
        if (DIR* d = ::opendir(backing().c_str())) {
            while (dirent* e = ::readdir(d))
                if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, ".."))
                    ::unlink((backing() + "/" + e->d_name).c_str());
            ::closedir(d);
        }
        ::rmdir(backing().c_str());
        ::rmdir(mnt().c_str());
        ::rmdir(m_dir.c_str());
    }
    std::string backing() const { return m_dir + "/backing"; }
    std::string mnt() const { return m_dir + "/mnt"; }

private:
    std::string m_dir;
};

std::vector<char> pattern(std::size_t size, unsigned seed)
{
    std::vector<char> v(size);
    for (std::size_t i = 0; i < size; ++i) v[i] = static_cast<char>((i * 131 + seed * 7 + i / 4096) & 0xff);
    return v;
}

std::string slurp(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

std::string as_string(const std::vector<char>& v) { return std::string(v.begin(), v.end()); }

double ms_since(Clock::time_point t)
{
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Opens the gate and joins, also when a REQUIRE fails while the thread waits at the gate.
class Writer {
public:
    Writer(SlowFs& fs, int fd, std::vector<char> data, off_t off) : m_fs(fs)
    {
        m_thread = std::thread([this, fd, data = std::move(data), off] {
            m_result = ::pwrite(fd, data.data(), data.size(), off);
            m_done = true;
        });
    }
    ~Writer()
    {
        m_fs.open_gate();
        join();
    }
    bool done() const { return m_done; }
    ssize_t join()
    {
        if (m_thread.joinable()) m_thread.join();
        return m_result;
    }

private:
    SlowFs& m_fs;
    std::thread m_thread;
    std::atomic<bool> m_done{false};
    ssize_t m_result = -1;
};

// Polls until `pred` holds or `timeout` passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 10s)
{
    const auto deadline = Clock::now() + timeout;
    while (!pred()) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) {}
    ~Fd()
    {
        if (fd >= 0) ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

// An io_uring whose destructor first opens the gate, so that a request held there ends.
class Ring {
public:
    explicit Ring(SlowFs& fs) : m_fs(fs) { REQUIRE(::io_uring_queue_init(8, &m_ring, 0) == 0); }
    ~Ring()
    {
        m_fs.open_gate();
        ::io_uring_queue_exit(&m_ring);
    }
    io_uring_sqe* sqe() { return ::io_uring_get_sqe(&m_ring); }
    void submit() { REQUIRE(::io_uring_submit(&m_ring) == 1); }
    // Waits for one completion; returns its result.
    int wait()
    {
        io_uring_cqe* cqe = nullptr;
        REQUIRE(::io_uring_wait_cqe(&m_ring, &cqe) == 0);
        const int res = cqe->res;
        ::io_uring_cqe_seen(&m_ring, cqe);
        return res;
    }
    bool completion_pending()
    {
        io_uring_cqe* cqe = nullptr;
        return ::io_uring_peek_cqe(&m_ring, &cqe) == 0;
    }

private:
    SlowFs& m_fs;
    io_uring m_ring{};
};

}  // namespace

TEST_CASE("slowfs mounts a passthrough of the backing directory and unmounts cleanly", "[slowfs]")
{
    Scratch scratch;
    std::string mountpoint;
    {
        SlowFs fs(scratch.backing(), scratch.mnt(), 0);
        mountpoint = fs.mountpoint();
        struct statfs sfs{};
        REQUIRE(::statfs(fs.mountpoint().c_str(), &sfs) == 0);
        CHECK(sfs.f_type == 0x65735546);
        CHECK(pagerd::test::is_mount_point(fs.mountpoint()));

        const SlowFsStats s0 = fs.stats();
        CHECK(s0.writes == 0);
        CHECK(s0.bytes_written == 0);
        CHECK(s0.blocked == 0);
        CHECK(slurp(fs.path(".slowfs-stats")) == "writes 0\nbytes_written 0\nblocked 0\n");

        // A file made in the backing directory shows through, next to the stats file.
        { std::ofstream(fs.backing_path("outside"), std::ios::binary) << "from the backing dir"; }
        CHECK(slurp(fs.path("outside")) == "from the backing dir");
        std::set<std::string> names;
        DIR* d = ::opendir(fs.mountpoint().c_str());
        REQUIRE(d);
        while (dirent* e = ::readdir(d)) names.insert(e->d_name);
        ::closedir(d);
        CHECK(names.count("outside") == 1);
        CHECK(names.count(".slowfs-stats") == 1);

        // A file made through the mount lands in the backing directory.
        const auto data = pattern(2 * kPage, 1);
        {
            Fd f(::open(fs.path("made").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644));
            REQUIRE(f.fd >= 0);
            REQUIRE(::pwrite(f.fd, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
            CHECK(::fdatasync(f.fd) == 0);
            CHECK(::fsync(f.fd) == 0);
            struct stat st{};
            REQUIRE(::fstat(f.fd, &st) == 0);
            CHECK(st.st_size == static_cast<off_t>(data.size()));
        }
        CHECK(slurp(fs.backing_path("made")) == as_string(data));
        const SlowFsStats s1 = fs.stats();
        CHECK(s1.writes == 1);  // one pwrite, one write request: no writeback cache
        CHECK(s1.bytes_written == data.size());

        CHECK(::truncate(fs.path("made").c_str(), kPage) == 0);
        struct stat st{};
        REQUIRE(::stat(fs.backing_path("made").c_str(), &st) == 0);
        CHECK(st.st_size == static_cast<off_t>(kPage));
        CHECK(::unlink(fs.path("made").c_str()) == 0);
        CHECK(::access(fs.backing_path("made").c_str(), F_OK) == -1);

        // The stats file is read-only and stays.
        errno = 0;
        CHECK(::open(fs.path(".slowfs-stats").c_str(), O_WRONLY) == -1);
        CHECK(errno == EACCES);
        CHECK(::unlink(fs.path(".slowfs-stats").c_str()) == -1);

        CHECK(fs.stop() == 0);  // exit status 0: also no sanitizer report from slowfs
        CHECK_FALSE(pagerd::test::is_mount_point(mountpoint));
    }
    CHECK_FALSE(pagerd::test::is_mount_point(mountpoint));
}

TEST_CASE("slowfs: every write request sleeps the delay, reads do not", "[slowfs]")
{
    constexpr int kDelayMs = 150;
    Scratch scratch;
    SlowFs fs(scratch.backing(), scratch.mnt(), kDelayMs);

    Fd f(::open(fs.path("slow").c_str(), O_RDWR | O_CREAT, 0644));
    REQUIRE(f.fd >= 0);
    std::vector<char> expect;
    for (unsigned i = 0; i < 3; ++i) {
        const auto data = pattern(kPage, 10 + i);
        const auto t = Clock::now();
        REQUIRE(::pwrite(f.fd, data.data(), data.size(), i * kPage) == static_cast<ssize_t>(kPage));
        const double ms = ms_since(t);
        INFO("pwrite " << i << " took " << ms << " ms");
        CHECK(ms >= kDelayMs);
        expect.insert(expect.end(), data.begin(), data.end());
        CHECK(fs.writes() == i + 1);
    }
    // 64 KiB in one call: still one request (max_write is larger), one delay.
    const auto big = pattern(16 * kPage, 20);
    auto t = Clock::now();
    REQUIRE(::pwrite(f.fd, big.data(), big.size(), 3 * kPage) == static_cast<ssize_t>(big.size()));
    CHECK(ms_since(t) >= kDelayMs);
    expect.insert(expect.end(), big.begin(), big.end());
    SlowFsStats s = fs.stats();
    CHECK(s.writes == 4);
    CHECK(s.bytes_written == expect.size());
    CHECK(slurp(fs.backing_path("slow")) == as_string(expect));

    // Reads give back the bytes written: through the page cache and through O_DIRECT
    // (every pread a read request to slowfs). No read request waits for the delay.
    std::vector<char> back(expect.size());
    REQUIRE(::pread(f.fd, back.data(), back.size(), 0) == static_cast<ssize_t>(back.size()));
    CHECK(back == expect);
    {
        Fd d(::open(fs.path("slow").c_str(), O_RDONLY | O_DIRECT));
        REQUIRE(d.fd >= 0);
        void* buf = nullptr;
        REQUIRE(::posix_memalign(&buf, kPage, kPage) == 0);
        double slowest = 0;
        for (std::size_t off = 0; off < expect.size(); off += kPage) {
            t = Clock::now();
            const ssize_t n = ::pread(d.fd, buf, kPage, static_cast<off_t>(off));
            slowest = std::max(slowest, ms_since(t));
            CHECK(n == static_cast<ssize_t>(kPage));
            CHECK(std::memcmp(buf, expect.data() + off, kPage) == 0);
        }
        std::free(buf);
        INFO("slowest O_DIRECT pread of a page: " << slowest << " ms");
        CHECK(slowest < kDelayMs);
    }
    // A 1 MiB file written to the backing directory directly: nothing cached, read whole.
    const auto mib = pattern(1 << 20, 30);
    { std::ofstream(fs.backing_path("cold"), std::ios::binary).write(mib.data(), static_cast<std::streamsize>(mib.size())); }
    t = Clock::now();
    const std::string cold = slurp(fs.path("cold"));
    const double cold_ms = ms_since(t);
    INFO("reading 1 MiB through slowfs took " << cold_ms << " ms");
    CHECK(cold == as_string(mib));
    // At least 8 read requests (read-ahead is 128 KiB at most): >= 8 delays if reads slept.
    // Half that is the bound, so that a loaded machine does not fail it.
    CHECK(cold_ms < 4 * kDelayMs);
    CHECK(fs.writes() == 4);  // reads do not count
    CHECK(fs.stop() == 0);
}

TEST_CASE("slowfs: a closed gate holds writers until it is opened, and nothing else", "[slowfs]")
{
    Scratch scratch;
    SlowFs fs(scratch.backing(), scratch.mnt(), 0);
    const auto other = pattern(8 * kPage, 40);
    { std::ofstream(fs.backing_path("other"), std::ios::binary).write(other.data(), static_cast<std::streamsize>(other.size())); }
    Fd a(::open(fs.path("a").c_str(), O_RDWR | O_CREAT, 0644));
    Fd b(::open(fs.path("other").c_str(), O_RDWR));
    REQUIRE(a.fd >= 0);
    REQUIRE(b.fd >= 0);

    fs.close_gate();
    const auto data_a = pattern(kPage, 41);
    Writer wa(fs, a.fd, data_a, 0);
    // Fails at once, not after the timeout, if the write went through.
    REQUIRE(eventually([&] { return wa.done() || fs.blocked_writes() == 1; }));
    REQUIRE_FALSE(wa.done());
    CHECK(slurp(fs.path(".slowfs-stats")) == "writes 0\nbytes_written 0\nblocked 1\n");

    // A second writer, another file: both wait, each on its own slowfs thread.
    const auto data_b = pattern(kPage, 42);
    Writer wb(fs, b.fd, data_b, 4 * kPage);
    REQUIRE(eventually([&] { return wb.done() || fs.blocked_writes() == 2; }));
    REQUIRE_FALSE(wb.done());

    // Meanwhile everything else is served: reads (also of another page of the file being
    // written), stat, readdir, a new file.
    std::this_thread::sleep_for(100ms);
    {
        Fd r(::open(fs.path("other").c_str(), O_RDONLY | O_DIRECT));
        REQUIRE(r.fd >= 0);
        void* buf = nullptr;
        REQUIRE(::posix_memalign(&buf, kPage, kPage) == 0);
        CHECK(::pread(r.fd, buf, kPage, 0) == static_cast<ssize_t>(kPage));
        CHECK(std::memcmp(buf, other.data(), kPage) == 0);
        std::free(buf);
    }
    struct stat st{};
    CHECK(::stat(fs.path("a").c_str(), &st) == 0);
    CHECK(::access(fs.path("new").c_str(), F_OK) == -1);
    { Fd n(::open(fs.path("new").c_str(), O_RDWR | O_CREAT, 0644)); CHECK(n.fd >= 0); }
    CHECK_FALSE(wa.done());
    CHECK_FALSE(wb.done());
    SlowFsStats s = fs.stats();
    CHECK(s.blocked == 2);
    CHECK(s.writes == 0);
    CHECK(slurp(fs.backing_path("a")).empty());

    fs.open_gate();
    CHECK(wa.join() == static_cast<ssize_t>(kPage));
    CHECK(wb.join() == static_cast<ssize_t>(kPage));
    s = fs.stats();
    CHECK(s.blocked == 0);
    CHECK(s.writes == 2);
    CHECK(s.bytes_written == 2 * kPage);
    CHECK(slurp(fs.backing_path("a")) == as_string(data_a));
    auto expect_b = other;
    std::copy(data_b.begin(), data_b.end(), expect_b.begin() + 4 * kPage);
    CHECK(slurp(fs.backing_path("other")) == as_string(expect_b));

    // Closed again, opened again: the gate works more than once.
    fs.close_gate();
    Writer wc(fs, a.fd, data_b, kPage);
    REQUIRE(fs.wait_blocked(1));
    CHECK_FALSE(wc.done());
    fs.open_gate();
    CHECK(wc.join() == static_cast<ssize_t>(kPage));
    CHECK(fs.writes() == 3);
    CHECK(fs.stop() == 0);
}

TEST_CASE("slowfs: io_uring writes and fsync go through the write handler and the gate", "[slowfs]")
{
    constexpr int kDelayMs = 50;
    Scratch scratch;
    SlowFs fs(scratch.backing(), scratch.mnt(), kDelayMs);
    Fd f(::open(fs.path("ring").c_str(), O_RDWR | O_CREAT, 0644));
    REQUIRE(f.fd >= 0);
    Ring ring(fs);

    const auto first = pattern(2 * kPage, 50);
    auto t = Clock::now();
    ::io_uring_prep_write(ring.sqe(), f.fd, first.data(), static_cast<unsigned>(first.size()), 0);
    ring.submit();
    CHECK(ring.wait() == static_cast<int>(first.size()));
    CHECK(ms_since(t) >= kDelayMs);
    ::io_uring_prep_fsync(ring.sqe(), f.fd, IORING_FSYNC_DATASYNC);
    ring.submit();
    CHECK(ring.wait() == 0);
    SlowFsStats s = fs.stats();
    CHECK(s.writes == 1);
    CHECK(s.bytes_written == first.size());
    CHECK(slurp(fs.backing_path("ring")) == as_string(first));

    std::vector<char> back(first.size());
    ::io_uring_prep_read(ring.sqe(), f.fd, back.data(), static_cast<unsigned>(back.size()), 0);
    ring.submit();
    CHECK(ring.wait() == static_cast<int>(back.size()));
    CHECK(back == first);

    // A write-back in progress: the io_uring write waits at the gate, no completion.
    fs.close_gate();
    const auto second = pattern(kPage, 51);
    ::io_uring_prep_write(ring.sqe(), f.fd, second.data(), static_cast<unsigned>(second.size()), first.size());
    ring.submit();
    REQUIRE(eventually([&] { return ring.completion_pending() || fs.blocked_writes() == 1; }));
    REQUIRE_FALSE(ring.completion_pending());
    std::this_thread::sleep_for(100ms);
    CHECK_FALSE(ring.completion_pending());
    CHECK(fs.writes() == 1);
    fs.open_gate();
    CHECK(ring.wait() == static_cast<int>(second.size()));
    ::io_uring_prep_fsync(ring.sqe(), f.fd, 0);
    ring.submit();
    CHECK(ring.wait() == 0);
    s = fs.stats();
    CHECK(s.writes == 2);
    CHECK(s.blocked == 0);
    CHECK(s.bytes_written == first.size() + second.size());
    CHECK(slurp(fs.backing_path("ring")) == as_string(first) + as_string(second));
    CHECK(fs.stop() == 0);
}

TEST_CASE("slowfs: a killed slowfs leaves no mount behind, nor takes another's", "[slowfs]")
{
    Scratch scratch;
    SlowFs first(scratch.backing(), scratch.mnt(), 0);
    const std::string mountpoint = first.mountpoint();
    REQUIRE(::kill(first.pid(), SIGKILL) == 0);
    // The connection is gone, the mount stays until someone detaches it.
    REQUIRE(eventually([&] {
        struct statfs sfs{};
        return ::statfs(mountpoint.c_str(), &sfs) == -1 && errno == ENOTCONN;
    }));
    CHECK(pagerd::test::is_mount_point(mountpoint));

    // A new SlowFs at the same place detaches the dead mount...
    SlowFs second(scratch.backing(), scratch.mnt(), 0);
    CHECK(second.stats().writes == 0);
    // ...and the first one's stop() reaps its process but leaves the new mount alone.
    const int status = first.stop();
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    CHECK(second.stats().writes == 0);
    CHECK(second.stop() == 0);
    CHECK_FALSE(pagerd::test::is_mount_point(mountpoint));

    // Killed with nobody after it: stop() detaches the dead mount.
    SlowFs third(scratch.backing(), scratch.mnt(), 0);
    REQUIRE(::kill(third.pid(), SIGKILL) == 0);
    CHECK(WIFSIGNALED(third.stop()));
    CHECK_FALSE(pagerd::test::is_mount_point(mountpoint));
}

TEST_CASE("slowfs: a test process killed with a write at the gate leaves no mount behind", "[slowfs]")
{
    Scratch scratch;
    REQUIRE(::mkdir(scratch.backing().c_str(), 0755) == 0);
    REQUIRE(::mkdir(scratch.mnt().c_str(), 0755) == 0);
    char canon[PATH_MAX];
    REQUIRE(::realpath(scratch.mnt().c_str(), canon));
    const std::string mountpoint = canon;

    // A: subreaper, so that it can reap slowfs once B, the "test", is gone.
    // B: mounts, holds a write at the gate, dies by SIGKILL; no destructor runs.
    // A's exit code says what went wrong.
    const pid_t a = ::fork();
    REQUIRE(a != -1);
    if (a == 0) {
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);
        int gate_pipe[2];
        if (::pipe(gate_pipe) == -1) ::_exit(2);
        const pid_t b = ::fork();
        if (b == 0) {
            try {
                auto* fs = new SlowFs(scratch.backing(), scratch.mnt(), 0);  // never destroyed
                const std::string gate = fs->gate_path() + "\n";
                if (::write(gate_pipe[1], gate.data(), gate.size()) != static_cast<ssize_t>(gate.size()))
                    ::_exit(3);
                fs->close_gate();
                const int fd = ::open(fs->path("f").c_str(), O_RDWR | O_CREAT, 0644);
                std::thread([fd] { ::pwrite(fd, "x", 1, 0); }).detach();
                if (!fs->wait_blocked(1)) ::_exit(4);
            } catch (...) {
                ::_exit(5);
            }
            ::raise(SIGKILL);
        }
        ::close(gate_pipe[1]);
        char buf[PATH_MAX] = {};
        const ssize_t n = ::read(gate_pipe[0], buf, sizeof buf - 1);
        int st = 0;
        ::waitpid(b, &st, 0);
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) ::_exit(WIFEXITED(st) ? 10 + WEXITSTATUS(st) : 6);
        // slowfs, B's orphan, is ours now: it must end by itself, cleanly, unmounted.
        const auto deadline = Clock::now() + 10s;
        int code = 0;
        for (;;) {
            const pid_t r = ::waitpid(-1, &st, WNOHANG);
            if (r > 0) {
                code = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 7;
                break;
            }
            if (r == -1 || Clock::now() > deadline) {
                code = 8;
                break;
            }
            std::this_thread::sleep_for(2ms);
        }
        if (pagerd::test::is_mount_point(mountpoint)) code = code ? code : 9;
        // The private directory B's SlowFs left: gate and log.
        if (n > 1) {
            const std::string gate(buf, static_cast<std::size_t>(n - 1));
            const std::string dir = gate.substr(0, gate.rfind('/'));
            if (code) std::fprintf(stderr, "slowfs output:\n%s\n", slurp(dir + "/slowfs.log").c_str());
            ::unlink(gate.c_str());
            ::unlink((dir + "/slowfs.log").c_str());
            ::rmdir(dir.c_str());
        }
        ::_exit(code);
    }
    int st = 0;
    const bool ended = eventually([&] { return ::waitpid(a, &st, WNOHANG) == a; }, 30s);
    if (!ended) {
        // B cannot finish dying while its write waits at the gate: slowfs never got the
        // signal. Leave no mount at least (B and slowfs stay stuck until slowfs is killed).
        ::kill(a, SIGKILL);
        ::waitpid(a, &st, 0);
    }
    if (pagerd::test::is_mount_point(mountpoint)) ::umount2(mountpoint.c_str(), MNT_DETACH);
    REQUIRE(ended);
    INFO("exit code of the watcher: 0 ok, 6/1x B ended otherwise, 7 slowfs unclean, 8 slowfs "
         "did not end, 9 mount left");
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
}

namespace {

// A pread on its own thread; opens the read gate and joins, also when a REQUIRE fails
// while the thread waits at the gate.
class Reader {
public:
    Reader(SlowFs& fs, int fd, std::size_t size, off_t off) : m_fs(fs), m_buf(size)
    {
        m_thread = std::thread([this, fd, off] {
            m_result = ::pread(fd, m_buf.data(), m_buf.size(), off);
            m_done = true;
        });
    }
    ~Reader()
    {
        m_fs.open_read_gate();
        join();
    }
    bool done() const { return m_done; }
    ssize_t join()
    {
        if (m_thread.joinable()) m_thread.join();
        return m_result;
    }
    const std::vector<char>& bytes() const { return m_buf; }

private:
    SlowFs& m_fs;
    std::thread m_thread;
    std::vector<char> m_buf;
    std::atomic<bool> m_done{false};
    ssize_t m_result = -1;
};

}  // namespace

TEST_CASE("slowfs: a closed read gate holds reads of its range after they read, at most MAX of them",
          "[slowfs][read-gate]")
{
    Scratch scratch;
    pagerd::test::SlowFsOptions o;
    o.direct_io = true;
    o.read_gate = true;
    SlowFs fs(scratch.backing(), scratch.mnt(), o);
    CHECK(slurp(fs.path(".slowfs-stats")) == "writes 0\nbytes_written 0\nblocked 0\nreads 0\nread_blocked 0\n");
    const auto old_bytes = pattern(16 * kPage, 60);
    { std::ofstream(fs.backing_path("f"), std::ios::binary).write(old_bytes.data(), static_cast<std::streamsize>(old_bytes.size())); }
    Fd f(::open(fs.path("f").c_str(), O_RDWR));
    REQUIRE(f.fd >= 0);
    const auto page = [](const std::vector<char>& v, std::size_t pg) {
        return std::vector<char>(v.begin() + static_cast<long>(pg * kPage), v.begin() + static_cast<long>((pg + 1) * kPage));
    };

    // Page 4 only, one read at most.
    fs.close_read_gate(4 * kPage, kPage, 1);
    Reader held(fs, f.fd, kPage, 4 * kPage);
    REQUIRE(eventually([&] { return held.done() || fs.blocked_reads() == 1; }));
    REQUIRE_FALSE(held.done());
    // Meanwhile: a read of another page, and a second read of page 4 (one is held
    // already), go through; a write of page 4 through the mount lands (direct_io: the
    // held read locks no page).
    std::vector<char> buf(kPage);
    CHECK(::pread(f.fd, buf.data(), kPage, 0) == static_cast<ssize_t>(kPage));
    CHECK(buf == page(old_bytes, 0));
    CHECK(::pread(f.fd, buf.data(), kPage, 4 * kPage) == static_cast<ssize_t>(kPage));
    CHECK(buf == page(old_bytes, 4));
    const auto new_bytes = pattern(kPage, 61);
    CHECK(::pwrite(f.fd, new_bytes.data(), kPage, 4 * kPage) == static_cast<ssize_t>(kPage));
    CHECK(slurp(fs.backing_path("f")).substr(4 * kPage, kPage) == as_string(new_bytes));
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(held.done());
    SlowFsStats s = fs.stats();
    CHECK(s.read_blocked == 1);
    CHECK(s.reads == 2);
    // Opened: the held read returns the bytes it read when it arrived, before the write.
    fs.open_read_gate();
    CHECK(held.join() == static_cast<ssize_t>(kPage));
    CHECK(held.bytes() == page(old_bytes, 4));
    CHECK(::pread(f.fd, buf.data(), kPage, 4 * kPage) == static_cast<ssize_t>(kPage));
    CHECK(buf == new_bytes);
    s = fs.stats();
    CHECK(s.read_blocked == 0);
    CHECK(s.reads == 4);

    // No range: every read waits, any number of them.
    fs.close_read_gate();
    Reader a(fs, f.fd, kPage, 0);
    Reader b(fs, f.fd, 2 * kPage, 9 * kPage);
    REQUIRE(eventually([&] { return a.done() || b.done() || fs.blocked_reads() == 2; }));
    CHECK_FALSE(a.done());
    CHECK_FALSE(b.done());
    fs.open_read_gate();
    CHECK(a.join() == static_cast<ssize_t>(kPage));
    CHECK(b.join() == static_cast<ssize_t>(2 * kPage));
    CHECK(a.bytes() == page(old_bytes, 0));
    CHECK(fs.stop() == 0);
}

TEST_CASE("slowfs: a mount without a read gate refuses close_read_gate and reads as before", "[slowfs][read-gate]")
{
    Scratch scratch;
    SlowFs fs(scratch.backing(), scratch.mnt(), 0);
    CHECK(fs.read_gate_path().empty());
    CHECK_THROWS_AS(fs.close_read_gate(), std::logic_error);
    CHECK_THROWS_AS(fs.close_read_gate(0, kPage), std::logic_error);
    fs.open_read_gate();  // nothing to open: no error
    CHECK(fs.stats().reads == 0);
    CHECK(fs.stop() == 0);
}
