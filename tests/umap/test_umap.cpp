// The UMap-compatible C API (umap/umap.h) against the real daemon. The API keeps one
// implicit connection per process, made from $PAGERD_SOCKET on first use, so every
// scenario runs in a forked child that starts with no connection.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <chrono>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "libclient/fake_daemon.hpp"
#include "umap/umap.h"

using namespace pagerd;
using namespace pagerd::test;

namespace {

const std::uint64_t k_page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));

std::uint64_t round_up(std::uint64_t n) { return (n + k_page - 1) / k_page * k_page; }

// In a child: on failure, say where and why on stderr and exit 1.
#define CHILD_REQUIRE(cond)                                                                          \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            std::fprintf(stderr, "%s:%d: %s failed (errno %d %s; %s)\n", __FILE__, __LINE__, #cond, \
                         errno, std::strerror(errno), pagerd_umap_last_error());                     \
            return 1;                                                                                \
        }                                                                                            \
    } while (0)

#define CHILD_SAME(got, want)                                                                   \
    do {                                                                                        \
        const std::string diff_ = difference(got, want);                                        \
        if (!diff_.empty()) {                                                                   \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #got, diff_.c_str()); \
            return 1;                                                                           \
        }                                                                                       \
    } while (0)

int open_file(const std::string& path, int flags) { return ::open(path.c_str(), flags | O_CLOEXEC); }

// What a plain read(2) of the file says now.
std::vector<std::uint8_t> read_back(const std::string& path)
{
    std::vector<std::uint8_t> out;
    const int fd = open_file(path, O_RDONLY);
    if (fd < 0) return out;
    std::uint8_t buf[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) break;
        out.insert(out.end(), buf, buf + n);
    }
    ::close(fd);
    return out;
}

// Runs fn in a child connected (on first use) to `daemon`; expects exit status 0.
void in_child(const Daemon& daemon, const std::function<int()>& fn)
{
    const int st = run_child([&] {
        ::setenv("PAGERD_SOCKET", daemon.socket().c_str(), 1);
        return fn();
    }, std::chrono::seconds(120));
    CHECK(exited_with(st, 0));
}

std::uint8_t written_byte(std::uint64_t i) { return static_cast<std::uint8_t>(i * 131 + 17); }

// "" when equal, else where they first differ (Catch2 would print whole files).
std::string difference(const std::vector<std::uint8_t>& got, const std::vector<std::uint8_t>& want)
{
    if (got.size() != want.size())
        return "size " + std::to_string(got.size()) + " instead of " + std::to_string(want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
        if (got[i] != want[i])
            return "byte " + std::to_string(i) + " is " + std::to_string(got[i]) + " instead of " +
                   std::to_string(want[i]);
    return "";
}

}  // namespace

TEST_CASE("umap PROT_READ: the region holds the file's bytes", "[umap][read]")
{
    TempDir dir;
    const std::uint64_t size = 3 * 1024 * 1024 + 1234;  // a partial last page
    make_file(dir.file("data"), size, 5);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDONLY);
        CHILD_REQUIRE(fd >= 0);
        auto* p = static_cast<const std::uint8_t*>(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        // An offset, and a length that is not a whole number of pages.
        const std::uint64_t off = 16 * k_page, len = 100000;
        auto* q = static_cast<const std::uint8_t*>(
            umap(nullptr, len, PROT_READ, UMAP_PRIVATE, fd, static_cast<off_t>(off)));
        CHILD_REQUIRE(q != UMAP_FAILED);
        ::close(fd);  // the descriptor stays the caller's: the regions do not need it
        CHILD_REQUIRE(std::memcmp(p, expect.data(), size) == 0);
        for (std::uint64_t i = size; i < round_up(size); ++i) CHILD_REQUIRE(p[i] == 0);
        CHILD_REQUIRE(std::memcmp(q, expect.data() + off, len) == 0);
        CHILD_REQUIRE(umap_flush() == 0);  // nothing dirty: nothing to do
        CHILD_REQUIRE(uunmap(const_cast<std::uint8_t*>(q), len) == 0);
        CHILD_REQUIRE(uunmap(const_cast<std::uint8_t*>(p), size) == 0);
        errno = 0;
        CHILD_REQUIRE(uunmap(const_cast<std::uint8_t*>(p), size) == -1 && errno == EINVAL);
        return 0;
    });
    CHECK(difference(read_file(dir.file("data")), expect) == "");
}

TEST_CASE("umap with fd -1: anonymous memory from the daemon's zero store", "[umap][anonymous]")
{
    Daemon daemon({"--memory-max=8MiB"});
    in_child(daemon, [&] {
        // Larger than the daemon's page-cache budget: clean pages are evicted and read as
        // zeros again; written pages are this process's own.
        const std::uint64_t size = 32ull << 20;
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, -1, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        for (std::uint64_t i = 0; i < size; i += k_page) CHILD_REQUIRE(p[i] == 0 && p[i + k_page - 1] == 0);
        for (std::uint64_t i = 0; i < size; i += 2 * k_page) p[i] = written_byte(i);
        for (std::uint64_t i = 0; i < size; i += k_page)
            CHILD_REQUIRE(p[i] == (i % (2 * k_page) == 0 ? written_byte(i) : 0));
        auto* q = static_cast<const std::uint8_t*>(umap(nullptr, 5000, PROT_READ, UMAP_PRIVATE, -1, 0));
        CHILD_REQUIRE(q != UMAP_FAILED);
        for (std::uint64_t i = 0; i < 5000; ++i) CHILD_REQUIRE(q[i] == 0);
        errno = 0;
        CHILD_REQUIRE(umap(nullptr, 4096, PROT_READ, UMAP_PRIVATE, -1, 4096) == UMAP_FAILED && errno == EINVAL);
        CHILD_REQUIRE(umap_flush() == 0);
        CHILD_REQUIRE(uunmap(const_cast<std::uint8_t*>(q), 5000) == 0);
        CHILD_REQUIRE(uunmap(p, size) == 0);
        return 0;
    });
    CHECK(daemon.status().cache_evictions > 0);
}

TEST_CASE("umap PROT_READ|PROT_WRITE: writes reach the file on umap_flush", "[umap][write]")
{
    TempDir dir;
    const std::uint64_t size = 4 * 1024 * 1024;
    make_file(dir.file("data"), size, 6);
    auto expect = read_file(dir.file("data"));
    // Every third page gets a run of bytes, and the last byte of the file changes.
    std::vector<std::uint64_t> changed;
    for (std::uint64_t pg = 0; pg < size / k_page; pg += 3)
        for (std::uint64_t i = pg * k_page + 100; i < pg * k_page + 300; ++i) changed.push_back(i);
    changed.push_back(size - 1);
    for (auto i : changed) expect[i] = written_byte(i);
    auto expect_second = expect;  // after a second round of writes
    expect_second[12345] = 0xA5;
    Daemon daemon;
    in_child(daemon, [&] {
        CHILD_REQUIRE(umap_has_write_support() == 1);
        const int fd = open_file(dir.file("data"), O_RDWR);
        CHILD_REQUIRE(fd >= 0);
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        for (auto i : changed) p[i] = written_byte(i);
        CHILD_REQUIRE(umap_flush() == 0);
        // A plain read() of the file sees the writes now, while the region is still mapped.
        CHILD_SAME(read_back(dir.file("data")), expect);
        CHILD_REQUIRE(std::memcmp(p, expect.data(), size) == 0);
        // A second round of writes, a second flush.
        p[12345] = 0xA5;
        CHILD_REQUIRE(umap_flush() == 0);
        CHILD_SAME(read_back(dir.file("data")), expect_second);
        CHILD_REQUIRE(uunmap(p, size) == 0);
        ::close(fd);
        return 0;
    });
    CHECK(difference(read_file(dir.file("data")), expect_second) == "");
}

TEST_CASE("uunmap writes a writable region's dirty pages to the file", "[umap][write]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024 + 777;
    make_file(dir.file("data"), size, 8);
    auto expect = read_file(dir.file("data"));
    for (std::uint64_t i = 0; i < size; i += 1001) expect[i] = written_byte(i);
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDWR);
        CHILD_REQUIRE(fd >= 0);
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        ::close(fd);
        for (std::uint64_t i = 0; i < size; i += 1001) p[i] = written_byte(i);
        CHILD_REQUIRE(uunmap(p, size) == 0);  // no umap_flush(): uunmap writes them
        CHILD_SAME(read_back(dir.file("data")), expect);
        return 0;
    });
    // The file keeps its length: the region's tail past the end of the file is not written.
    CHECK(difference(read_file(dir.file("data")), expect) == "");
}

TEST_CASE("a descriptor opened O_DIRECT, as UMap programs do, maps and writes back", "[umap][write][direct]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024 + 1000;  // a partial last page
    make_file(dir.file("data"), size, 12);
    {
        const int probe = open_file(dir.file("data"), O_RDWR | O_DIRECT);
        if (probe < 0) {
            WARN("O_DIRECT is not supported in " << dir.path() << ": " << std::strerror(errno));
            return;
        }
        ::close(probe);
    }
    auto expect = read_file(dir.file("data"));
    for (std::uint64_t i = 0; i < size; i += 333) expect[i] = written_byte(i);
    expect[size - 1] = 0x42;
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDWR | O_DIRECT);
        CHILD_REQUIRE(fd >= 0);
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        for (std::uint64_t i = 0; i < size; i += 333) p[i] = written_byte(i);
        p[size - 1] = 0x42;
        CHILD_REQUIRE(umap_flush() == 0);
        CHILD_SAME(read_back(dir.file("data")), expect);
        CHILD_REQUIRE(uunmap(p, size) == 0);
        CHILD_REQUIRE(::fcntl(fd, F_GETFL) & O_DIRECT);  // the caller's descriptor is untouched
        ::close(fd);
        return 0;
    });
    CHECK(difference(read_file(dir.file("data")), expect) == "");
}

TEST_CASE("two regions of two files at once, one read-only and one writable", "[umap][write]")
{
    TempDir dir;
    const std::uint64_t size_a = 2 * 1024 * 1024, size_b = 3 * 1024 * 1024 + 10;
    make_file(dir.file("a"), size_a, 21);
    make_file(dir.file("b"), size_b, 22);
    const auto expect_a = read_file(dir.file("a"));
    auto expect_b = read_file(dir.file("b"));
    // b[i] = a[i] ^ b[i] for i < size_a: reads of one region, writes to the other.
    for (std::uint64_t i = 0; i < size_a; ++i) expect_b[i] = static_cast<std::uint8_t>(expect_a[i] ^ expect_b[i]);
    Daemon daemon;
    in_child(daemon, [&] {
        const int fa = open_file(dir.file("a"), O_RDONLY), fb = open_file(dir.file("b"), O_RDWR);
        CHILD_REQUIRE(fa >= 0 && fb >= 0);
        auto* a = static_cast<const std::uint8_t*>(umap(nullptr, size_a, PROT_READ, UMAP_PRIVATE, fa, 0));
        CHILD_REQUIRE(a != UMAP_FAILED);
        auto* b = static_cast<std::uint8_t*>(umap(nullptr, size_b, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fb, 0));
        CHILD_REQUIRE(b != UMAP_FAILED);
        CHILD_REQUIRE(a != b);
        for (std::uint64_t i = 0; i < size_a; ++i) b[i] = static_cast<std::uint8_t>(b[i] ^ a[i]);
        CHILD_REQUIRE(umap_flush() == 0);
        CHILD_SAME(read_back(dir.file("b")), expect_b);
        CHILD_REQUIRE(std::memcmp(a, expect_a.data(), size_a) == 0);
        CHILD_REQUIRE(uunmap(const_cast<std::uint8_t*>(a), size_a) == 0);
        CHILD_REQUIRE(uunmap(b, size_b) == 0);
        return 0;
    });
    CHECK(difference(read_file(dir.file("a")), expect_a) == "");
    CHECK(difference(read_file(dir.file("b")), expect_b) == "");
}

TEST_CASE("many threads write disjoint parts of one region, then umap_flush", "[umap][write][threads]")
{
    TempDir dir;
    const std::uint64_t size = 16 * 1024 * 1024;
    make_file(dir.file("data"), size, 30);
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDWR);
        CHILD_REQUIRE(fd >= 0);
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        constexpr unsigned k_threads = 8;
        std::vector<std::thread> pool;
        // Interleaved slices of 5 pages: threads write next to each other within a fault block.
        const std::uint64_t slice = 5 * k_page;
        for (unsigned t = 0; t < k_threads; ++t)
            pool.emplace_back([=] {
                for (std::uint64_t s = t * slice; s < size; s += k_threads * slice)
                    for (std::uint64_t i = s; i < std::min(s + slice, size); ++i) p[i] = pattern_byte(i, 31);
            });
        for (auto& th : pool) th.join();
        CHILD_REQUIRE(umap_flush() == 0);
        const auto got = read_back(dir.file("data"));
        CHILD_REQUIRE(got.size() == size);
        for (std::uint64_t i = 0; i < size; ++i) CHILD_REQUIRE(got[i] == pattern_byte(i, 31));
        CHILD_REQUIRE(uunmap(p, size) == 0);
        return 0;
    });
}

TEST_CASE("many threads make their first umap calls at once over one implicit connection", "[umap][threads]")
{
    TempDir dir;
    const std::uint64_t size = 2 * 1024 * 1024;
    constexpr unsigned k_threads = 8;
    for (unsigned t = 0; t < k_threads; ++t) make_file(dir.file("f" + std::to_string(t)), size, 40 + t);
    Daemon daemon;
    in_child(daemon, [&] {
        std::atomic<int> failures{0};
        std::barrier sync(k_threads);
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < k_threads; ++t)
            pool.emplace_back([&, t] {
                const bool writable = t % 2 == 1;
                const int fd = open_file(dir.file("f" + std::to_string(t)), writable ? O_RDWR : O_RDONLY);
                sync.arrive_and_wait();  // the first call of every thread at the same moment
                auto* p = static_cast<std::uint8_t*>(
                    umap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, UMAP_PRIVATE, fd, 0));
                if (p == UMAP_FAILED) std::fprintf(stderr, "thread %u: %s\n", t, pagerd_umap_last_error());
                sync.arrive_and_wait();
                if (p == UMAP_FAILED) {
                    ++failures;
                    sync.arrive_and_wait();
                    return;
                }
                for (std::uint64_t i = 0; i < size; i += 997) failures += p[i] != pattern_byte(i, 40 + t);
                if (writable)
                    for (std::uint64_t i = 0; i < size; i += 997) p[i] = static_cast<std::uint8_t>(t);
                if (umap_flush() != 0) ++failures;  // every thread flushes, all at once
                sync.arrive_and_wait();
                if (uunmap(p, size) != 0) ++failures;
                ::close(fd);
            });
        for (auto& th : pool) th.join();
        CHILD_REQUIRE(failures.load() == 0);
        // One implicit connection for all the threads (plus the one asking).
        CHILD_REQUIRE(daemon.status().clients == 2);
        return 0;
    });
    for (unsigned t = 0; t < k_threads; ++t) {
        const auto got = read_file(dir.file("f" + std::to_string(t)));
        std::uint64_t wrong = 0;
        for (std::uint64_t i = 0; i < size; i += 997)
            wrong += got[i] != (t % 2 ? static_cast<std::uint8_t>(t) : pattern_byte(i, 40 + t));
        INFO("file f" << t);
        CHECK(wrong == 0);
    }
}

TEST_CASE("threads map and unmap over and over while others do the same", "[umap][threads][churn]")
{
    TempDir dir;
    const std::uint64_t size = 2 * 1024 * 1024;
    constexpr unsigned k_threads = 8;
    for (unsigned t = 0; t < k_threads; ++t) make_file(dir.file("f" + std::to_string(t)), size, 40 + t);
    Daemon daemon;
    in_child(daemon, [&] {
        std::atomic<int> failures{0};
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < k_threads; ++t)
            pool.emplace_back([&, t] {
                const bool writable = t % 2 == 1;
                const int fd = open_file(dir.file("f" + std::to_string(t)), O_RDWR);
                for (int round = 0; round < 20 && fd >= 0; ++round) {
                    // The kernel hands out addresses that other threads have just unmapped.
                    auto* p = static_cast<std::uint8_t*>(
                        umap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, UMAP_PRIVATE, fd, 0));
                    if (p == UMAP_FAILED) {
                        std::fprintf(stderr, "thread %u round %d: %s\n", t, round, pagerd_umap_last_error());
                        ++failures;
                        continue;
                    }
                    for (std::uint64_t i = 0; i < size; i += 997)
                        if (p[i] != (writable && round > 0 ? static_cast<std::uint8_t>(round - 1)
                                                           : pattern_byte(i, 40 + t)))
                            ++failures;
                    if (writable) {
                        for (std::uint64_t i = 0; i < size; i += 997) p[i] = static_cast<std::uint8_t>(round);
                        if (umap_flush() != 0) ++failures;
                    }
                    if (uunmap(p, size) != 0) ++failures;
                }
                if (fd < 0) ++failures;
                ::close(fd);
            });
        for (auto& th : pool) th.join();
        CHILD_REQUIRE(failures.load() == 0);
        return 0;
    });
}

TEST_CASE("UMAP_FIXED places the region at the given address", "[umap][fixed]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 50);
    make_file(dir.file("rw"), size, 51);
    const auto expect = read_file(dir.file("data"));
    auto expect_rw = read_file(dir.file("rw"));
    expect_rw[4242] = 0x5A;
    Daemon daemon;
    in_child(daemon, [&] {
        // A reservation with a spare page either side; the regions go inside it.
        const std::uint64_t span = 2 * size + 3 * k_page;
        auto* area = static_cast<std::uint8_t*>(::mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        CHILD_REQUIRE(area != MAP_FAILED);
        std::uint8_t* want = area + k_page;
        std::uint8_t* want_rw = area + 2 * k_page + size;
        const int fd = open_file(dir.file("data"), O_RDONLY), frw = open_file(dir.file("rw"), O_RDWR);
        CHILD_REQUIRE(fd >= 0 && frw >= 0);
        void* p = umap(want, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0);
        CHILD_REQUIRE(p == want);
        void* q = umap(want_rw, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE | UMAP_FIXED, frw, 0);
        CHILD_REQUIRE(q == want_rw);
        CHILD_REQUIRE(std::memcmp(p, expect.data(), size) == 0);
        static_cast<std::uint8_t*>(q)[4242] = 0x5A;
        CHILD_REQUIRE(umap_flush() == 0);
        CHILD_SAME(read_back(dir.file("rw")), expect_rw);
        // Without UMAP_FIXED, addr is only ignored.
        void* r = umap(area, size, PROT_READ, UMAP_PRIVATE, fd, 0);
        CHILD_REQUIRE(r != UMAP_FAILED && r != area);
        CHILD_REQUIRE(std::memcmp(r, expect.data(), size) == 0);
        // UMAP_FIXED needs a page-aligned address.
        errno = 0;
        CHILD_REQUIRE(umap(area + 1, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0) == UMAP_FAILED);
        CHILD_REQUIRE(errno == EINVAL);
        CHILD_REQUIRE(uunmap(p, size) == 0);
        CHILD_REQUIRE(uunmap(q, size) == 0);
        CHILD_REQUIRE(uunmap(r, size) == 0);
        ::munmap(area, span);
        return 0;
    });
    CHECK(difference(read_file(dir.file("rw")), expect_rw) == "");
}

TEST_CASE("umap refuses bad arguments with UMAP_FAILED and errno", "[umap][errors]")
{
    TempDir dir;
    const std::uint64_t size = 256 * 1024;
    make_file(dir.file("data"), size, 60);
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDONLY);
        const int frw = open_file(dir.file("data"), O_RDWR);
        CHILD_REQUIRE(fd >= 0 && frw >= 0);
        auto refused = [&](void* addr, size_t len, int prot, int flags, int f, off_t off, int err) {
            errno = 0;
            void* p = umap(addr, len, prot, flags, f, off);
            if (p == UMAP_FAILED && errno == err && *pagerd_umap_last_error()) return true;
            std::fprintf(stderr, "umap(%p, %zu, %d, %d, %d, %lld): %p errno %d (want %d): %s\n", addr, len, prot,
                         flags, f, static_cast<long long>(off), p, errno, err, pagerd_umap_last_error());
            return false;
        };
        // prot
        CHILD_REQUIRE(refused(nullptr, size, PROT_WRITE, UMAP_PRIVATE, frw, 0, EINVAL));
        CHILD_REQUIRE(refused(nullptr, size, PROT_NONE, UMAP_PRIVATE, fd, 0, EINVAL));
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ | PROT_EXEC, UMAP_PRIVATE, fd, 0, EINVAL));
        // flags: UMAP_PRIVATE is required, nothing but UMAP_FIXED may join it
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, 0, fd, 0, EINVAL));
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, MAP_SHARED, fd, 0, EINVAL));
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, UMAP_PRIVATE | MAP_POPULATE, fd, 0, EINVAL));
        // offset and length
        CHILD_REQUIRE(refused(nullptr, size - k_page, PROT_READ, UMAP_PRIVATE, fd, 100, EINVAL));
        CHILD_REQUIRE(refused(nullptr, size - k_page, PROT_READ, UMAP_PRIVATE, fd, -static_cast<off_t>(k_page), EINVAL));
        CHILD_REQUIRE(refused(nullptr, 0, PROT_READ, UMAP_PRIVATE, fd, 0, EINVAL));
        CHILD_REQUIRE(refused(nullptr, size + k_page, PROT_READ, UMAP_PRIVATE, fd, 0, EINVAL));  // past the end
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, static_cast<off_t>(size), EINVAL));
        // descriptors
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, UMAP_PRIVATE, -2, 0, EBADF));  // (-1: anonymous memory)
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, UMAP_PRIVATE, 987, 0, EBADF));
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0, EACCES));
        const int dirfd = ::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        CHILD_REQUIRE(refused(nullptr, size, PROT_READ, UMAP_PRIVATE, dirfd, 0, EINVAL));
        // uunmap of what umap did not make
        int on_stack = 0;
        errno = 0;
        CHILD_REQUIRE(uunmap(&on_stack, sizeof on_stack) == -1 && errno == EINVAL);
        void* p = umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0);
        CHILD_REQUIRE(p != UMAP_FAILED);
        errno = 0;
        CHILD_REQUIRE(uunmap(static_cast<char*>(p) + k_page, size - k_page) == -1 && errno == EINVAL);
        // after all that, the good call works and errno is left alone by success
        errno = 12345;
        CHILD_REQUIRE(uunmap(p, size) == 0 && errno == 12345);
        return 0;
    });
}

TEST_CASE("the daemon's refusals become errno values", "[umap][errors]")
{
    TempDir dir;
    const std::uint64_t size = 64 * 1024;
    make_file(dir.file("data"), size, 65);
    Daemon daemon({"--max-regions-per-client", "1"});
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDONLY);
        CHILD_REQUIRE(fd >= 0);
        errno = 0;
        CHILD_REQUIRE(umap(nullptr, size + k_page, PROT_READ, UMAP_PRIVATE, fd, 0) == UMAP_FAILED);
        CHILD_REQUIRE(errno == EINVAL);  // PAST_EOF
        CHILD_REQUIRE(std::strncmp(pagerd_umap_last_error(), "umap: pagerd: ", 14) == 0);
        void* p = umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0);
        CHILD_REQUIRE(p != UMAP_FAILED);
        errno = 0;
        CHILD_REQUIRE(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0) == UMAP_FAILED);
        CHILD_REQUIRE(errno == ENOMEM);  // LIMIT
        CHILD_REQUIRE(std::strncmp(pagerd_umap_last_error(), "umap: pagerd: ", 14) == 0);
        CHILD_REQUIRE(uunmap(p, size) == 0);
        CHILD_REQUIRE((p = umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0)) != UMAP_FAILED);  // room again
        CHILD_REQUIRE(uunmap(p, size) == 0);
        return 0;
    });
}

TEST_CASE("without a daemon umap fails with errno set, and works once one is there", "[umap][errors][socket]")
{
    TempDir dir;
    const std::uint64_t size = 64 * 1024;
    make_file(dir.file("data"), size, 70);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    const int st = run_child([&] {
        ::setenv("PAGERD_SOCKET", dir.file("nobody-here.sock").c_str(), 1);
        const int fd = open_file(dir.file("data"), O_RDONLY);
        CHILD_REQUIRE(fd >= 0);
        for (int attempt = 0; attempt < 2; ++attempt) {
            errno = 0;
            CHILD_REQUIRE(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0) == UMAP_FAILED);
            CHILD_REQUIRE(errno == ECONNREFUSED);
            CHILD_REQUIRE(std::strstr(pagerd_umap_last_error(), "is pagerd running") != nullptr);
        }
        CHILD_REQUIRE(umap_flush() == 0);  // nothing mapped, nothing to write
        errno = 0;
        CHILD_REQUIRE(uunmap(reinterpret_cast<void*>(0x10000), size) == -1 && errno == EINVAL);
        // The failure is not remembered: with a daemon there, the next call connects.
        ::setenv("PAGERD_SOCKET", daemon.socket().c_str(), 1);
        auto* p = static_cast<const std::uint8_t*>(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        CHILD_REQUIRE(std::memcmp(p, expect.data(), size) == 0);
        CHILD_REQUIRE(uunmap(const_cast<std::uint8_t*>(p), size) == 0);
        return 0;
    });
    CHECK(exited_with(st, 0));
}

TEST_CASE("umap: no listener is ECONNREFUSED, the daemon's client limit ENOMEM, a lost daemon ENOTCONN",
          "[umap][errors][socket]")
{
    TempDir dir;
    const std::uint64_t size = 64 * 1024;
    make_file(dir.file("data"), size, 71);
    // A socket file nobody listens on (a daemon that died without removing it).
    {
        const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        REQUIRE(s >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, dir.file("dead.sock").c_str(), sizeof addr.sun_path - 1);
        REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        ::close(s);
    }
    int st = run_child([&] {
        ::setenv("PAGERD_SOCKET", dir.file("dead.sock").c_str(), 1);
        const int fd = open_file(dir.file("data"), O_RDONLY);
        errno = 0;
        CHILD_REQUIRE(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0) == UMAP_FAILED);
        CHILD_REQUIRE(errno == ECONNREFUSED);
        return 0;
    });
    CHECK(exited_with(st, 0));

    Daemon daemon({"--max-clients", "1"});
    {
        auto only = connect_within(daemon.socket());  // the one client allowed
        REQUIRE(only);
        // A program, not a forked child: `only` runs a thread in this process, and under
        // ThreadSanitizer a child forked now could not start the thread of a connection.
        const auto child = run_command({PAGERD_TEST_CHILD, "umap-fails", daemon.socket(), dir.file("data"),
                                        std::to_string(size), std::to_string(ENOMEM), "too many clients"});
        INFO(child.err);
        CHECK(exited_with(child.status, 0));
    }

    // The child maps (and so connects), then the daemon is killed under it. Forked while
    // this process runs no thread (`only` is gone), then this process kills the daemon.
    int mapped[2], killed[2];
    REQUIRE(::pipe2(mapped, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(killed, O_CLOEXEC) == 0);
    const pid_t child = start_child([&] {
        ::setenv("PAGERD_SOCKET", daemon.socket().c_str(), 1);
        const int fd = open_file(dir.file("data"), O_RDONLY);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        // ENOMEM while the daemon has not yet let the clients above go.
        while (umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0) == UMAP_FAILED) {
            CHILD_REQUIRE(errno == ENOMEM && std::chrono::steady_clock::now() < deadline);
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        char b = 0;
        CHILD_REQUIRE(::write(mapped[1], "m", 1) == 1 && ::read(killed[0], &b, 1) == 1);
        // The first call may still see the close itself; then the connection is lost.
        for (;;) {
            errno = 0;
            CHILD_REQUIRE(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0) == UMAP_FAILED);
            if (errno == ENOTCONN) return 0;
            CHILD_REQUIRE(std::chrono::steady_clock::now() < deadline);
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    });
    ::close(mapped[1]);  // a child that fails before it maps ends the read below
    if (char b = 0; ::read(mapped[0], &b, 1) == 1) {
        daemon.kill_hard();
        (void)!::write(killed[1], "k", 1);
    }
    st = wait_child(child);
    for (int f : {mapped[0], killed[0], killed[1]}) ::close(f);
    CHECK(exited_with(st, 0));
}

TEST_CASE("umap: what only an unusual daemon says, UNKNOWN_TYPE is ENOSYS and a senseless reply EPROTO",
          "[umap][errors][fake]")
{
    TempDir dir;
    const std::uint64_t size = 64 * 1024;
    make_file(dir.file("data"), size, 72);
    // A daemon older than the library (MAP unknown to it), and one whose replies make no sense.
    FakeDaemon old_daemon(dir.file("old.sock"), [](const proto::Message& m) {
        return FakeDaemon::reply(m.request_id, proto::ErrorReply{proto::ErrorCode::UNKNOWN_TYPE, "unknown message type"});
    });
    FakeDaemon odd(dir.file("odd.sock"), [](const proto::Message& m) { return FakeDaemon::reply(m.request_id, proto::Ok{}); });
    REQUIRE(old_daemon.listening());
    REQUIRE(odd.listening());
    // Programs, not forked children: the fake daemons serve from threads of this process,
    // and under ThreadSanitizer a child forked now could not start the thread of a connection.
    for (const auto& [socket, err] : {std::pair{dir.file("old.sock"), ENOSYS}, std::pair{dir.file("odd.sock"), EPROTO}}) {
        const auto child = run_command({PAGERD_TEST_CHILD, "umap-fails", socket, dir.file("data"), std::to_string(size),
                                        std::to_string(err)});
        INFO(socket << ": " << child.err);
        CHECK(exited_with(child.status, 0));
    }
}

TEST_CASE("a forked child of a umap user gets its own connection", "[umap][fork]")
{
    TempDir dir;
    const std::uint64_t size = 512 * 1024;
    make_file(dir.file("data"), size, 80);
    Daemon daemon;
    // The UMap user is a program (pagerd-test-child umap-fork): it maps, forks, the child
    // maps anew and does not see the parent's region, the parent's region is untouched.
    // Its forked child starts a thread (its own connection's) in a child of a process with
    // threads (the parent's connection's), which ThreadSanitizer allows only in a program
    // that says so: see tests/helpers/test_child.cpp.
    const auto user = run_command({PAGERD_TEST_CHILD, "umap-fork", daemon.socket(), dir.file("data"), std::to_string(size)},
                                  {}, std::chrono::seconds(120));
    INFO(user.err);
    CHECK(exited_with(user.status, 0));
}

TEST_CASE("a process that exits without uunmap still writes its dirty pages", "[umap][write][exit]")
{
    TempDir dir;
    const std::uint64_t size = 256 * 1024;
    make_file(dir.file("data"), size, 90);
    auto expect = read_file(dir.file("data"));
    for (std::uint64_t i = 0; i < size; i += 4096) expect[i] = written_byte(i);
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDWR);
        CHILD_REQUIRE(fd >= 0);
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        for (std::uint64_t i = 0; i < size; i += 4096) p[i] = written_byte(i);
        std::exit(0);  // a normal exit: no umap_flush, no uunmap
    });
    CHECK(difference(read_file(dir.file("data")), expect) == "");
}

TEST_CASE("umap_prefetch loads the given pages", "[umap][prefetch]")
{
    TempDir dir;
    const std::uint64_t size = 8 * 1024 * 1024;
    make_file(dir.file("data"), size, 95);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    in_child(daemon, [&] {
        const int fd = open_file(dir.file("data"), O_RDONLY);
        auto* p = static_cast<std::uint8_t*>(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0));
        CHILD_REQUIRE(p != UMAP_FAILED);
        const auto before = daemon.status().bytes_read;
        std::vector<umap_prefetch_item> items;
        for (std::uint64_t off = 0; off < size; off += size / 8) items.push_back({p + off});
        umap_prefetch(static_cast<int>(items.size()), items.data());
        // Asynchronous, as in UMap: the daemon reads the pages soon after, untouched.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (daemon.status().bytes_read < before + items.size() * k_page &&
               std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        CHILD_REQUIRE(daemon.status().bytes_read >= before + items.size() * k_page);
        CHILD_REQUIRE(std::memcmp(p, expect.data(), size) == 0);
        // An address outside every region is skipped and reported.
        int outside = 0;
        umap_prefetch_item bad[2] = {{p}, {&outside}};
        errno = 0;
        umap_prefetch(2, bad);
        CHILD_REQUIRE(errno == EINVAL);
        CHILD_REQUIRE(uunmap(p, size) == 0);
        return 0;
    });
}

TEST_CASE("umapcfg getters report UMap's defaults and honour UMap's variables", "[umap][config]")
{
    const auto sys_page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const unsigned hw = std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 16;
    // Defaults (no daemon needed: the getters never connect).
    int st = run_child([&] {
        for (const char* v : {"UMAP_PAGESIZE", "UMAP_BUFSIZE", "UMAP_PAGE_FILLERS", "UMAP_PAGE_EVICTORS",
                              "UMAP_READ_AHEAD", "UMAP_MAX_FAULT_EVENTS", "UMAP_EVICT_LOW_WATER_THRESHOLD",
                              "UMAP_EVICT_HIGH_WATER_THRESHOLD"})
            ::unsetenv(v);
        const std::uint64_t ram = static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) * sys_page;
        CHILD_REQUIRE(umapcfg_get_system_page_size() == static_cast<long>(sys_page));
        CHILD_REQUIRE(umapcfg_get_umap_page_size() == sys_page);
        CHILD_REQUIRE(umapcfg_get_max_pages_in_buffer() == ram / sys_page * 80 / 100);
        CHILD_REQUIRE(umapcfg_get_num_fillers() == hw);
        CHILD_REQUIRE(umapcfg_get_num_evictors() == hw);
        CHILD_REQUIRE(umapcfg_get_read_ahead() == 0);
        CHILD_REQUIRE(umapcfg_get_max_fault_events() == 256);
        CHILD_REQUIRE(umapcfg_get_evict_low_water_threshold() == 70);
        CHILD_REQUIRE(umapcfg_get_evict_high_water_threshold() == 90);
        CHILD_REQUIRE(umap_has_write_support() == 1);
        return 0;
    });
    CHECK(exited_with(st, 0));
    // Every variable set.
    st = run_child([&] {
        ::setenv("UMAP_PAGESIZE", std::to_string(16 * sys_page).c_str(), 1);
        ::setenv("UMAP_BUFSIZE", "1234", 1);
        ::setenv("UMAP_PAGE_FILLERS", "3", 1);
        ::setenv("UMAP_PAGE_EVICTORS", "5", 1);
        ::setenv("UMAP_READ_AHEAD", "7", 1);
        ::setenv("UMAP_MAX_FAULT_EVENTS", "11", 1);
        ::setenv("UMAP_EVICT_LOW_WATER_THRESHOLD", "20", 1);
        ::setenv("UMAP_EVICT_HIGH_WATER_THRESHOLD", "60", 1);
        CHILD_REQUIRE(umapcfg_get_umap_page_size() == 16 * sys_page);
        CHILD_REQUIRE(umapcfg_get_max_pages_in_buffer() == 1234);
        CHILD_REQUIRE(umapcfg_get_num_fillers() == 3);
        CHILD_REQUIRE(umapcfg_get_num_evictors() == 5);
        CHILD_REQUIRE(umapcfg_get_read_ahead() == 7);
        CHILD_REQUIRE(umapcfg_get_max_fault_events() == 11);
        CHILD_REQUIRE(umapcfg_get_evict_low_water_threshold() == 20);
        CHILD_REQUIRE(umapcfg_get_evict_high_water_threshold() == 60);
        return 0;
    });
    CHECK(exited_with(st, 0));
    // A UMAP_PAGESIZE that is not a multiple of the system page is ignored; so are zero and
    // text; the default buffer size follows the UMap page size.
    st = run_child([&] {
        ::setenv("UMAP_PAGESIZE", std::to_string(sys_page + 512).c_str(), 1);
        ::unsetenv("UMAP_BUFSIZE");
        ::setenv("UMAP_PAGE_FILLERS", "0", 1);
        ::setenv("UMAP_PAGE_EVICTORS", "many", 1);
        CHILD_REQUIRE(umapcfg_get_umap_page_size() == sys_page);
        CHILD_REQUIRE(umapcfg_get_num_fillers() == hw);
        CHILD_REQUIRE(umapcfg_get_num_evictors() == hw);
        return 0;
    });
    CHECK(exited_with(st, 0));
    st = run_child([&] {
        ::setenv("UMAP_PAGESIZE", std::to_string(4 * sys_page).c_str(), 1);
        ::unsetenv("UMAP_BUFSIZE");
        const std::uint64_t ram = static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) * sys_page;
        CHILD_REQUIRE(umapcfg_get_max_pages_in_buffer() == ram / (4 * sys_page) * 80 / 100);
        return 0;
    });
    CHECK(exited_with(st, 0));
}

TEST_CASE("a C program written for UMap builds and runs against pagerd", "[umap][example]")
{
    TempDir dir;
    const std::uint64_t size = 3 * 1024 * 1024 + 5000;
    make_file(dir.file("data"), size, 99);
    const auto original = read_file(dir.file("data"));
    std::uint64_t sum = 0;
    for (auto b : original) sum += b;
    Daemon daemon;
    const std::string env = "PAGERD_SOCKET=" + daemon.socket();

    SECTION("read-only")
    {
        auto r = run_command({UMAP_EXAMPLE_BINARY, "-r", dir.file("data")}, {env});
        INFO(r.err);
        REQUIRE(exited_with(r.status, 0));
        CHECK(r.out == "sum " + std::to_string(sum) + "\n");
        CHECK(difference(read_file(dir.file("data")), original) == "");
    }
    SECTION("read-write")
    {
        auto r = run_command({UMAP_EXAMPLE_BINARY, dir.file("data")}, {env});
        INFO(r.err);
        REQUIRE(exited_with(r.status, 0));
        CHECK(r.out == "sum " + std::to_string(sum) + "\n");
        const auto got = read_file(dir.file("data"));
        REQUIRE(got.size() == size);
        bool same = true;
        for (std::uint64_t i = 0; i < size && same; ++i) same = got[i] == static_cast<std::uint8_t>((i * 7 + 3) & 0xff);
        CHECK(same);
    }
    SECTION("no daemon")
    {
        auto r = run_command({UMAP_EXAMPLE_BINARY, "-r", dir.file("data")},
                             {"PAGERD_SOCKET=" + dir.file("nobody.sock")});
        CHECK(exited_with(r.status, 7));
        CHECK_THAT(r.err, Catch::Contains("umap") && Catch::Contains("is pagerd running"));
    }
}

TEST_CASE("the shared library exports the UMap API", "[umap][abi]")
{
    auto r = run_command({"/bin/sh", "-c", std::string("nm -D --defined-only ") + CLIENT_SHARED_LIB});
    REQUIRE(exited_with(r.status, 0));
    std::vector<std::string> want{"umap", "uunmap", "umap_flush", "umap_has_write_support", "umap_prefetch",
                                  "umapcfg_get_system_page_size", "umapcfg_get_umap_page_size",
                                  "umapcfg_get_max_pages_in_buffer", "umapcfg_get_num_fillers",
                                  "umapcfg_get_num_evictors", "umapcfg_get_read_ahead",
                                  "umapcfg_get_max_fault_events", "umapcfg_get_evict_low_water_threshold",
                                  "umapcfg_get_evict_high_water_threshold", "pagerd_umap_last_error"};
    for (const auto& name : want) {
        INFO(name);
        CHECK((r.out.find(" T " + name + "\n") != std::string::npos ||
               r.out.find(" T " + name + "@@") != std::string::npos));
    }
}

TEST_CASE("umap.h is a C header as well as a C++ one", "[umap][abi]")
{
    // The same declarations compiled here as C++; the C side is umap_example.c (C11).
    void* (*map_fn)(void*, size_t, int, int, int, off_t) = &umap;
    int (*unmap_fn)(void*, size_t) = &uunmap;
    CHECK(map_fn != nullptr);
    CHECK(unmap_fn != nullptr);
    CHECK(UMAP_FAILED == reinterpret_cast<void*>(-1));
    CHECK(UMAP_PRIVATE == MAP_PRIVATE);
    CHECK(UMAP_FIXED == MAP_FIXED);
}
