// Prefetch policies (Sequential, None, All) and explicit PREFETCH requests: what a client
// reads never changes, read-ahead and fills really load ahead of the faults, prefetches
// racing faults and unmaps leave the daemon healthy, and the daemon's memory does not grow
// with the size of the regions.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <shared_mutex>
#include <thread>

#include "harness.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Prefetch;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;
// Every daemon here gets this fault block, so that fault counts do not depend on the default.
constexpr std::uint64_t k_block = 16384;
const std::vector<std::string> k_args{"--fault-block", std::to_string(k_block)};
constexpr int k_no_such_region = static_cast<int>(proto::ErrorCode::NO_SUCH_REGION);

const char* access_name(Access a)
{
    return a == Access::ReadOnly ? "read-only" : a == Access::PrivateWritable ? "private-writable" : "shared";
}

libclient::MapOptions map_options(std::uint64_t length, Access access, Prefetch prefetch)
{
    libclient::MapOptions o;
    o.offset = 0;
    o.length = length;
    o.access = access;
    o.prefetch = prefetch;
    return o;
}

libclient::Region map_or_fail(libclient::Connection& c, const std::string& path, const libclient::MapOptions& o)
{
    auto r = c.map_file(path, o);
    if (!r) FAIL("map " << path << " (prefetch " << libclient::prefetch_name(o.prefetch) << "): " << r.error().message);
    return r.value();
}

// The file's bytes as pread(2) gives them.
std::vector<std::uint8_t> pread_file(const std::string& path, std::uint64_t length)
{
    std::vector<std::uint8_t> out(length);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    std::uint64_t done = 0;
    while (done < length) {
        const ssize_t n = ::pread(fd, out.data() + done, length - done, static_cast<off_t>(done));
        REQUIRE(n > 0);
        done += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return out;
}

// The daemon's entry for region r of this process (the tests have one connection with
// regions; a region split in pieces: its first piece, faults are the whole region's).
libclient::RegionInfo region_info(libclient::Connection& c, const libclient::Region& r)
{
    auto list = c.regions();
    if (!list) FAIL("regions: " << list.error().message);
    for (const auto& e : list.value())
        if (e.pid == static_cast<std::uint32_t>(::getpid()) && e.id == r.id) return e;
    FAIL("region " << r.id << " is not in the daemon's list");
    return {};
}

// Pages of [addr, addr + length) present in this process's memory (mincore).
std::uint64_t resident_pages(const void* addr, std::uint64_t length)
{
    std::vector<unsigned char> v(length / k_page);
    REQUIRE(::mincore(const_cast<void*>(addr), length, v.data()) == 0);
    return static_cast<std::uint64_t>(std::count_if(v.begin(), v.end(), [](unsigned char b) { return b & 1; }));
}

std::uint64_t sum(const libclient::LatencyHistogram& h) { return std::accumulate(h.begin(), h.end(), std::uint64_t{0}); }

// Reads one byte of every page in order, like a scan through the region.
void touch_in_order(const std::uint8_t* p, std::uint64_t from_page, std::uint64_t to_page)
{
    for (std::uint64_t pg = from_page; pg < to_page; ++pg) (void)static_cast<const volatile std::uint8_t*>(p)[pg * k_page + pg % k_page];
}

// What a writer thread stores in page `pg` (a whole page of it): never a page of the file.
std::uint8_t tag_of(std::uint64_t pg) { return static_cast<std::uint8_t>(0x5A ^ (pg * 31)); }

bool page_is_tag(const std::uint8_t* q, std::uint64_t pg)
{
    for (std::uint64_t i = 0; i < k_page; ++i)
        if (q[i] != tag_of(pg)) return false;
    return true;
}

// Counts wrong pages seen by the threads (Catch2 assertions are for the main thread).
struct Mistakes {
    std::atomic<std::uint64_t> count{0};
    std::atomic<std::int64_t> first{-1};
    void note(std::uint64_t pg)
    {
        if (count++ == 0) first = static_cast<std::int64_t>(pg);
    }
};

}  // namespace

TEST_CASE("every policy and access: concurrent readers, writes and unmaps see the right bytes", "[prefetch][policies]")
{
    const Prefetch policy = GENERATE(Prefetch::None, Prefetch::Sequential, Prefetch::All);
    const Access access = GENERATE(Access::ReadOnly, Access::PrivateWritable, Access::Shared);
    INFO("prefetch " << libclient::prefetch_name(policy) << ", access " << access_name(access));
    TempDir dir;
    const std::uint64_t pages = 3072, size = pages * k_page;  // 12 MiB
    const std::uint64_t victim_size = 4 * k_mib;
    make_file(dir.file("data"), size, 201);
    make_file(dir.file("victim"), victim_size, 202);
    const auto file = pread_file(dir.file("data"), size);
    const auto victim_file = pread_file(dir.file("victim"), victim_size);
    Daemon daemon(k_args);
    auto conn = daemon.connect();
    const auto r = map_or_fail(*conn, dir.file("data"), map_options(size, access, policy));
    // A second region of the connection, unmapped as a whole while the threads run.
    const auto victim = map_or_fail(*conn, dir.file("victim"), map_options(victim_size, access, policy));
    auto* p = static_cast<std::uint8_t*>(r.addr);

    // Pages [hole_lo, hole_hi) are munmap'ed while the others are read and written.
    const std::uint64_t hole_lo = 1800, hole_hi = 2200;
    auto in_hole = [&](std::uint64_t pg) { return pg >= hole_lo && pg < hole_hi; };
    const bool writes = access != Access::ReadOnly;
    auto written = [&](std::uint64_t pg) { return writes && pg % 5 == 2 && !in_hole(pg); };
    Mistakes wrong;
    auto check_page = [&](std::uint64_t pg) {
        const std::uint8_t* q = p + pg * k_page;
        if (written(pg)) {
            (void)static_cast<const volatile std::uint8_t*>(q)[0];  // the writer's or the file's bytes
            return;
        }
        if (std::memcmp(q, file.data() + pg * k_page, k_page) != 0) wrong.note(pg);
    };

    std::atomic<std::uint64_t> progress{0};
    std::shared_mutex hole_mutex;
    bool hole_gone = false;  // under hole_mutex
    std::vector<std::thread> pool;
    pool.emplace_back([&] {  // forward from the start
        for (std::uint64_t pg = 0; pg < pages; ++pg) {
            if (!in_hole(pg)) check_page(pg);
            progress = pg;
        }
    });
    pool.emplace_back([&] {  // forward from the middle, wrapping around
        for (std::uint64_t i = 0; i < pages; ++i)
            if (const std::uint64_t pg = (pages / 2 + i) % pages; !in_hole(pg)) check_page(pg);
    });
    pool.emplace_back([&] {  // random
        std::vector<std::uint64_t> order(pages);
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), std::mt19937_64(7));
        for (const auto pg : order)
            if (!in_hole(pg)) check_page(pg);
    });
    pool.emplace_back([&] {  // backwards
        for (std::uint64_t pg = pages; pg-- > 0;)
            if (!in_hole(pg)) check_page(pg);
    });
    pool.emplace_back([&] {  // the pages that go away, until they go
        for (std::uint64_t pg = hole_lo; pg < hole_hi; ++pg) {
            std::shared_lock lock(hole_mutex);
            if (hole_gone) break;
            check_page(pg);
        }
    });
    if (writes)
        pool.emplace_back([&] {  // writes whole pages, first touch or not
            for (std::uint64_t k = 0; k < 5; ++k)
                for (std::uint64_t pg = k; pg < pages; pg += 5)
                    if (written(pg)) std::memset(p + pg * k_page, tag_of(pg), k_page);
        });

    std::atomic<bool> victim_prefetch_ok{false}, victim_unmapped{false}, hole_unmapped{false}, hole_reserved{false};
    std::string victim_prefetch_error;
    std::thread unmapper([&] {
        const auto deadline = std::chrono::steady_clock::now() + 3s;
        while (progress < pages / 4 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
        // The second region goes while a prefetch that waits for all of it may be pending
        // (and, with All, while its fill runs): the wait ends, with OK, or NO_SUCH_REGION
        // when the prefetch arrives after the region went.
        std::thread waiter([&] {
            auto w = conn->prefetch(victim.addr, victim.size, true);
            victim_prefetch_ok = w.ok() || w.error().code == k_no_such_region;
            if (!w) victim_prefetch_error = w.error().message;
        });
        std::this_thread::sleep_for(1ms);
        victim_unmapped = conn->unmap(victim).ok();
        waiter.join();
        // Part of the main region goes while the other threads fault elsewhere in it.
        std::unique_lock lock(hole_mutex);
        hole_gone = true;
        void* at = p + hole_lo * k_page;
        const std::uint64_t len = (hole_hi - hole_lo) * k_page;
        hole_unmapped = ::munmap(at, len) == 0;
        // Keep the hole from being reused by another mapping of this process, which the
        // final unmap of the region would take with it.
        hole_reserved = ::mmap(at, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                               -1, 0) == at;
    });
    for (auto& t : pool) t.join();
    unmapper.join();
    INFO("first wrong page " << wrong.first);
    CHECK(wrong.count == 0);
    INFO("prefetch of the unmapped region: " << victim_prefetch_error);
    CHECK(victim_prefetch_ok);
    CHECK(victim_unmapped);
    REQUIRE(hole_unmapped);
    CHECK(hole_reserved);

    // The whole region but the hole: written pages hold what was written, the others the file.
    std::uint64_t n_written = 0;
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        if (in_hole(pg)) continue;
        INFO("page " << pg);
        if (written(pg)) {
            ++n_written;
            REQUIRE(page_is_tag(p + pg * k_page, pg));
        } else {
            REQUIRE(std::memcmp(p + pg * k_page, file.data() + pg * k_page, k_page) == 0);
        }
    }
    REQUIRE(conn->ping().ok());
    REQUIRE(daemon.alive());
    auto st = conn->status();
    REQUIRE(st.ok());
    CHECK(st->this_client_regions == 2);  // the main region, in two pieces around the hole

    if (hole_reserved && access == Access::Shared)
        ::munmap(p + hole_lo * k_page, (hole_hi - hole_lo) * k_page);  // a hole again, as the munmap left it
    if (access == Access::Shared) {
        auto f = conn->flush(r);
        if (!f) FAIL("flush: " << f.error().message);
        CHECK(f->pages == n_written);
    }
    const auto after = pread_file(dir.file("data"), size);
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        INFO("file page " << pg);
        if (access == Access::Shared && written(pg))
            REQUIRE(page_is_tag(after.data() + pg * k_page, pg));
        else
            REQUIRE(std::memcmp(after.data() + pg * k_page, file.data() + pg * k_page, k_page) == 0);
    }
    CHECK(pread_file(dir.file("victim"), victim_size) == victim_file);
    auto u = conn->unmap(r);
    if (!u) FAIL("unmap: " << u.error().message);
    CHECK(daemon.wait_until([](const auto& s) { return s.regions == 0; }));
    REQUIRE(conn->ping().ok());
}

TEST_CASE("sequential read-ahead makes a scan fault rarely, Prefetch::None faults once per block", "[prefetch][readahead]")
{
    TempDir dir;
    const std::uint64_t size = 32 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 211);
    const auto file = pread_file(dir.file("data"), size);
    Daemon daemon(k_args);
    auto conn = daemon.connect();

    SECTION("default policy, one scan")
    {
        const auto before = daemon.status();
        const auto r = map_or_fail(*conn, dir.file("data"), {0, size, Access::ReadOnly});
        const auto* p = static_cast<const std::uint8_t*>(r.addr);
        touch_in_order(p, 0, pages);
        REQUIRE(std::memcmp(p, file.data(), size) == 0);
        const auto info = region_info(*conn, r);
        const auto after = daemon.status();
        INFO("faults " << info.faults << ", pages prefetched " << after.pages_prefetched - before.pages_prefetched);
        CHECK(info.prefetch == Prefetch::Sequential);
        CHECK(info.faults > 0);
        CHECK(info.faults < pages / 8);
        // Faults install at most a block each: read-ahead installed the rest.
        CHECK(after.pages_prefetched - before.pages_prefetched >= pages / 2);
        CHECK(sum(info.latency_histogram) == info.faults);
        CHECK(info.latency_p50_ns > 0);
        CHECK(info.latency_p99_ns >= info.latency_p50_ns);
        CHECK(sum(after.latency_histogram) == after.faults);
    }
    SECTION("default policy, four threads each scanning its own quarter")
    {
        const auto before = daemon.status();
        const auto r = map_or_fail(*conn, dir.file("data"), {0, size, Access::ReadOnly});
        const auto* p = static_cast<const std::uint8_t*>(r.addr);
        std::vector<std::thread> pool;
        for (std::uint64_t t = 0; t < 4; ++t) pool.emplace_back([&, t] { touch_in_order(p, t * pages / 4, (t + 1) * pages / 4); });
        for (auto& th : pool) th.join();
        REQUIRE(std::memcmp(p, file.data(), size) == 0);
        const auto info = region_info(*conn, r);
        const auto after = daemon.status();
        INFO("faults " << info.faults << ", pages prefetched " << after.pages_prefetched - before.pages_prefetched);
        CHECK(info.faults < pages / 8);
        CHECK(after.pages_prefetched - before.pages_prefetched >= pages / 2);
    }
    SECTION("Prefetch::None")
    {
        const auto before = daemon.status();
        const auto r = map_or_fail(*conn, dir.file("data"), map_options(size, Access::ReadOnly, Prefetch::None));
        const auto* p = static_cast<const std::uint8_t*>(r.addr);
        touch_in_order(p, 0, pages);
        REQUIRE(std::memcmp(p, file.data(), size) == 0);
        const auto info = region_info(*conn, r);
        const auto after = daemon.status();
        INFO("faults " << info.faults);
        CHECK(info.prefetch == Prefetch::None);
        CHECK(info.faults >= pages / (k_block / k_page));
        CHECK(after.pages_prefetched == before.pages_prefetched);
        CHECK(info.prefetch_pending == 0);
        CHECK(sum(info.latency_histogram) == info.faults);
        CHECK(after.faults - before.faults == info.faults);
    }
}

TEST_CASE("Prefetch::All: after a waited prefetch nothing is pending and no page faults", "[prefetch][all]")
{
    const auto access = GENERATE(Access::ReadOnly, Access::PrivateWritable);
    INFO("access " << access_name(access));
    TempDir dir;
    const std::uint64_t size = 16 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 221);
    const auto file = pread_file(dir.file("data"), size);
    Daemon daemon(k_args);
    auto conn = daemon.connect();
    const auto r = map_or_fail(*conn, dir.file("data"), map_options(size, access, Prefetch::All));
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    auto w = conn->prefetch(r.addr, r.size, true);
    if (!w) FAIL("prefetch: " << w.error().message);
    const auto info = region_info(*conn, r);
    CHECK(info.prefetch == Prefetch::All);
    CHECK(info.prefetch_pending == 0);
    CHECK(resident_pages(p, size) == pages);
    CHECK(daemon.status().pages_prefetched >= pages);  // nothing was touched: all of it ahead of faults
    touch_in_order(p, 0, pages);
    CHECK(region_info(*conn, r).faults == info.faults);
    CHECK(info.faults == 0);
    REQUIRE(std::memcmp(p, file.data(), size) == 0);
}

TEST_CASE("Prefetch::All fills the region in the background without being asked", "[prefetch][all]")
{
    TempDir dir;
    const std::uint64_t size = 8 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 222);
    const auto file = pread_file(dir.file("data"), size);
    Daemon daemon(k_args);
    auto conn = daemon.connect();
    const auto r = map_or_fail(*conn, dir.file("data"), map_options(size, Access::ReadOnly, Prefetch::All));
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (resident_pages(p, size) < pages && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    REQUIRE(resident_pages(p, size) == pages);
    CHECK(daemon.wait_until([&](const auto&) { return region_info(*conn, r).prefetch_pending == 0; }));
    const auto faults = region_info(*conn, r).faults;
    CHECK(faults == 0);
    REQUIRE(std::memcmp(p, file.data(), size) == 0);
    CHECK(region_info(*conn, r).faults == faults);
}

TEST_CASE("faults go first: a fault does not wait for a background fill to finish", "[prefetch][all][latency]")
{
    TempDir dir;
    const std::uint64_t fill_size = 512 * k_mib, small_size = 8 * k_mib;
    {
        const int fd = ::open(dir.file("sparse").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(fill_size)) == 0);
        ::close(fd);
    }
    make_file(dir.file("small"), small_size, 225);
    Daemon daemon({"--fault-block", std::to_string(k_block), "--workers", "1"});
    auto conn = daemon.connect();
    const auto small = map_or_fail(*conn, dir.file("small"), map_options(small_size, Access::ReadOnly, Prefetch::None));
    // Half a GiB of holes: all of it is in the page cache, so the fill never waits for the
    // disk and could keep the daemon busy from start to end.
    const auto t0 = std::chrono::steady_clock::now();
    const auto fill = map_or_fail(*conn, dir.file("sparse"), map_options(fill_size, Access::ReadOnly, Prefetch::All));
    std::atomic<bool> filled{false};
    std::atomic<bool> fill_ok{false};
    std::chrono::steady_clock::duration fill_time{};
    std::thread waiter([&] {
        fill_ok = conn->prefetch(fill.addr, fill.size, true).ok();
        fill_time = std::chrono::steady_clock::now() - t0;
        filled = true;
    });
    // Meanwhile: one fault at a time in the other region, each timed by the faulting thread.
    const auto* p = static_cast<const volatile std::uint8_t*>(small.addr);
    std::chrono::steady_clock::duration slowest{};
    std::uint64_t touched = 0;
    for (std::uint64_t pg = 0; !filled && pg < small_size / k_page; pg += k_block / k_page) {
        const auto a = std::chrono::steady_clock::now();
        (void)p[pg * k_page];
        slowest = std::max(slowest, std::chrono::steady_clock::now() - a);
        ++touched;
        std::this_thread::sleep_for(1ms);
    }
    waiter.join();
    REQUIRE(fill_ok);
    const auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
    INFO("fill of 512 MiB: " << ms(fill_time) << " ms, " << touched << " faults meanwhile, slowest " << ms(slowest)
                             << " ms");
    CHECK(touched > 0);
    // A fault waits for the loads already in flight at most, never for the whole fill.
#if defined(__SANITIZE_THREAD__)
    // Under ThreadSanitizer the daemon runs several times slower, and a loaded machine
    // stretches the fill and the slowest fault alike (on a 2-CPU VM at load 9-14: fills of
    // 0.7-7 s, slowest faults of 50-800 ms); there the bound is a third of the fill.
    CHECK(slowest * 3 < fill_time);
#else
    CHECK(slowest < 100ms);
#endif
    CHECK(region_info(*conn, fill).prefetch_pending == 0);
}

TEST_CASE("an explicit prefetch loads its range and only its range", "[prefetch][explicit]")
{
    TempDir dir;
    const std::uint64_t size = 8 * k_mib;
    make_file(dir.file("data"), size, 231);
    const auto file = pread_file(dir.file("data"), size);
    Daemon daemon(k_args);
    auto conn = daemon.connect();
    const auto r = map_or_fail(*conn, dir.file("data"), map_options(size, Access::ReadOnly, Prefetch::None));
    const auto* p = static_cast<const std::uint8_t*>(r.addr);

    // With wait: every page of the range is there when it returns.
    auto w = conn->prefetch(p + 2 * k_mib, 2 * k_mib, true);
    if (!w) FAIL("prefetch: " << w.error().message);
    CHECK(resident_pages(p + 2 * k_mib, 2 * k_mib) == 2 * k_mib / k_page);
    CHECK(resident_pages(p, 2 * k_mib) == 0);
    CHECK(resident_pages(p + 4 * k_mib, 4 * k_mib) == 0);
    CHECK(region_info(*conn, r).prefetch_pending == 0);
    touch_in_order(p, 2 * k_mib / k_page, 4 * k_mib / k_page);
    CHECK(region_info(*conn, r).faults == 0);
    CHECK(std::memcmp(p + 2 * k_mib, file.data() + 2 * k_mib, 2 * k_mib) == 0);
    (void)static_cast<const volatile std::uint8_t*>(p)[5 * k_mib];
    CHECK(region_info(*conn, r).faults == 1);

    // Without wait: queued, then loaded in the background.
    REQUIRE(conn->prefetch(p + 6 * k_mib, k_mib).ok());
    CHECK(daemon.wait_until([&](const auto&) { return resident_pages(p + 6 * k_mib, k_mib) == k_mib / k_page; }));
    CHECK(daemon.wait_until([&](const auto&) { return region_info(*conn, r).prefetch_pending == 0; }));

    // A range that starts before the region: the part outside is ignored.
    REQUIRE(conn->prefetch(p - k_mib, 2 * k_mib, true).ok());
    CHECK(resident_pages(p, k_mib) == k_mib / k_page);
    CHECK(region_info(*conn, r).faults == 1);
    CHECK(std::memcmp(p, file.data(), size) == 0);

    // Refused: unaligned or empty (by the library), outside every region (by the daemon).
    auto unaligned = conn->prefetch(p + 1, k_page);
    REQUIRE_FALSE(unaligned.ok());
    CHECK(unaligned.error().code == EINVAL);
    auto odd_length = conn->prefetch(p, k_page + 1, true);
    REQUIRE_FALSE(odd_length.ok());
    CHECK(odd_length.error().code == EINVAL);
    auto empty = conn->prefetch(p, 0);
    REQUIRE_FALSE(empty.ok());
    CHECK(empty.error().code == EINVAL);
    void* elsewhere = ::mmap(nullptr, k_mib, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(elsewhere != MAP_FAILED);
    auto outside = conn->prefetch(elsewhere, k_mib, true);
    ::munmap(elsewhere, k_mib);
    REQUIRE_FALSE(outside.ok());
    CHECK(outside.error().code == k_no_such_region);
    CHECK_FALSE(outside.error().message.empty());
    REQUIRE(conn->unmap(r).ok());
    auto gone = conn->prefetch(p, k_page, true);
    REQUIRE_FALSE(gone.ok());
    CHECK(gone.error().code == k_no_such_region);
    REQUIRE(conn->ping().ok());
}

TEST_CASE("explicit prefetches racing faults and writes on the same pages", "[prefetch][race]")
{
    const Prefetch policy = GENERATE(Prefetch::None, Prefetch::Sequential, Prefetch::All);
    const Access access = GENERATE(Access::ReadOnly, Access::PrivateWritable);
    INFO("prefetch " << libclient::prefetch_name(policy) << ", access " << access_name(access));
    TempDir dir;
    const std::uint64_t pages = 4096, size = pages * k_page;  // 16 MiB
    make_file(dir.file("data"), size, 241);
    const auto file = pread_file(dir.file("data"), size);
    Daemon daemon(k_args);
    auto conn = daemon.connect();
    const auto r = map_or_fail(*conn, dir.file("data"), map_options(size, access, policy));
    auto* p = static_cast<std::uint8_t*>(r.addr);
    const bool writes = access == Access::PrivateWritable;
    auto written = [&](std::uint64_t pg) { return writes && pg % 3 == 1; };

    Mistakes wrong;
    std::atomic<unsigned> touchers_done{0};
    std::vector<std::thread> touchers;
    for (unsigned t = 0; t < 2; ++t)
        touchers.emplace_back([&, t] {
            std::vector<std::uint64_t> order(pages);
            std::iota(order.begin(), order.end(), 0);
            std::shuffle(order.begin(), order.end(), std::mt19937_64(100 + t));
            for (const auto pg : order) {
                const std::uint8_t* q = p + pg * k_page;
                if (written(pg))
                    (void)static_cast<const volatile std::uint8_t*>(q)[0];
                else if (std::memcmp(q, file.data() + pg * k_page, k_page) != 0)
                    wrong.note(pg);
            }
            ++touchers_done;
        });
    if (writes)
        touchers.emplace_back([&] {
            std::vector<std::uint64_t> order;
            for (std::uint64_t pg = 0; pg < pages; ++pg)
                if (written(pg)) order.push_back(pg);
            std::shuffle(order.begin(), order.end(), std::mt19937_64(99));
            for (const auto pg : order) std::memset(p + pg * k_page, tag_of(pg), k_page);
            ++touchers_done;
        });
    const unsigned n_touchers = static_cast<unsigned>(touchers.size());

    // Prefetches that wait, over ranges that overlap the pages being touched, some of them
    // reaching outside the region: when one returns, its whole range is there.
    std::atomic<unsigned> prefetches{0}, failed{0}, not_resident{0};
    std::string first_error;
    std::thread prefetcher([&] {
        std::mt19937_64 rng(5);
        while (touchers_done < n_touchers || prefetches < 20) {
            // Pages [first, first + count): up to 32 pages outside either end, never all of them.
            const std::int64_t first = std::min<std::int64_t>(static_cast<std::int64_t>(rng() % (pages + 64)) - 32,
                                                              static_cast<std::int64_t>(pages) - 1);
            const std::int64_t count = std::max<std::int64_t>(1 + static_cast<std::int64_t>(rng() % 512), 1 - first);
            auto w = conn->prefetch(p + first * static_cast<std::int64_t>(k_page), static_cast<std::size_t>(count) * k_page, true);
            ++prefetches;
            if (!w) {
                if (failed++ == 0) first_error = w.error().message;
                continue;
            }
            const std::int64_t lo = std::max<std::int64_t>(first, 0);
            const std::int64_t hi = std::min<std::int64_t>(first + count, static_cast<std::int64_t>(pages));
            if (hi > lo && resident_pages(p + lo * static_cast<std::int64_t>(k_page), static_cast<std::uint64_t>(hi - lo) * k_page) !=
                               static_cast<std::uint64_t>(hi - lo))
                ++not_resident;
        }
    });
    for (auto& t : touchers) t.join();
    prefetcher.join();
    INFO("prefetches " << prefetches << ", first error: " << first_error);
    CHECK(failed == 0);
    CHECK(not_resident == 0);
    INFO("first wrong page " << wrong.first);
    CHECK(wrong.count == 0);
    // Pages written before a prefetch reached them kept the written bytes (never replaced).
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        INFO("page " << pg);
        if (written(pg))
            REQUIRE(page_is_tag(p + pg * k_page, pg));
        else
            REQUIRE(std::memcmp(p + pg * k_page, file.data() + pg * k_page, k_page) == 0);
    }
    REQUIRE(conn->ping().ok());
    CHECK(daemon.wait_until([&](const auto&) { return region_info(*conn, r).prefetch_pending == 0; }));
    auto other = daemon.connect("other");
    REQUIRE(other->ping().ok());
    CHECK(pread_file(dir.file("data"), size) == file);
}

namespace {

// Daemon options of the memory test: its staging memory is workers × buffers × buffer size,
// a buffer being the fault block or 256 KiB, whichever is larger (Config::staging_buffer_bytes()).
constexpr std::uint64_t k_mem_workers = 2, k_mem_buffers = 16;
constexpr std::uint64_t k_staging_bytes = k_mem_workers * k_mem_buffers * std::max<std::uint64_t>(k_block, 256 * 1024);
// Its page cache (the region maps it) holds at most --memory-max, plus what one load per
// worker adds before the eviction that follows it.
constexpr std::uint64_t k_cache_budget = 16 * k_mib;
// Besides its staging buffers, the daemon's memory for one client may grow by its io_uring
// completions in flight, the allocator's caches, its log buffers and the cache's records of
// the pages it holds and evicted lately (under 64 bytes a page of budget: 256 KiB here);
// 16 MiB is far above that and far below a bit per page of 1 TiB (32 MiB).
constexpr std::uint64_t k_slack = 16 * k_mib;

struct MemoryRun {
    std::uint64_t idle = 0;   // VmRSS of the daemon once it answers, before any client
    std::uint64_t after = 0;  // VmRSS after the touches
    std::uint64_t hwm = 0;    // VmHWM then
    std::uint64_t faults = 0;
};

MemoryRun memory_run(std::uint64_t size)
{
    TempDir dir;
    const std::string path = dir.file("sparse");
    {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
        ::close(fd);
    }
    Daemon daemon({"--fault-block", std::to_string(k_block), "--workers", std::to_string(k_mem_workers),
                   "--staging-buffers", std::to_string(k_mem_buffers), "--max-mapped-bytes-per-client",
                   std::to_string(std::uint64_t{1} << 42), "--memory-max", std::to_string(k_cache_budget)});
    MemoryRun m;
    m.idle = proc_status_bytes(daemon.pid(), "VmRSS");
    auto conn = daemon.connect();
    const auto r = map_or_fail(*conn, path, {0, size, Access::ReadOnly});
    auto* p = static_cast<std::uint8_t*>(r.addr);
    const std::uint64_t pages = size / k_page;
    static const std::uint8_t zeros[k_page] = {};
    std::atomic<std::uint64_t> nonzero{0};
    auto check_zero = [&](std::uint64_t pg) {
        if (std::memcmp(p + pg * k_page, zeros, k_page) != 0) ++nonzero;
    };
    constexpr std::uint64_t k_spread = 20000;
    if (pages >= 64 * k_spread) {
        // 20000 pages spread over the whole region, in random order, from two threads.
        std::vector<std::uint64_t> order(k_spread);
        const std::uint64_t stride = pages / k_spread;
        for (std::uint64_t i = 0; i < k_spread; ++i) order[i] = i * stride + (i * 7919) % stride;
        std::shuffle(order.begin(), order.end(), std::mt19937_64(3));
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < 2; ++t)
            pool.emplace_back([&, t] {
                for (std::size_t i = t; i < order.size(); i += 2) check_zero(order[i]);
            });
        for (auto& th : pool) th.join();
        // And sequential runs of 4 MiB at six places.
        for (std::uint64_t k = 0; k < 6; ++k) {
            const std::uint64_t first = k * (pages / 6) + 12345;
            for (std::uint64_t pg = first; pg < first + 4 * k_mib / k_page; ++pg) check_zero(pg);
        }
    } else {
        // As much work on a small region: every block touched faults again after
        // MADV_DONTNEED, and the whole region is scanned over and over.
        const std::uint64_t blocks = size / k_block;
        for (std::uint64_t i = 0; i < k_spread; ++i) {
            check_zero((i * 7919) % blocks * (k_block / k_page));
            if (i % blocks == blocks - 1) REQUIRE(::madvise(p, size, MADV_DONTNEED) == 0);
        }
        for (std::uint64_t k = 0; k < 24; ++k) {
            REQUIRE(::madvise(p, size, MADV_DONTNEED) == 0);
            for (std::uint64_t pg = 0; pg < pages; ++pg) check_zero(pg);
        }
    }
    CHECK(nonzero == 0);  // a sparse file reads as zeros
    m.faults = region_info(*conn, r).faults;
    m.after = proc_status_bytes(daemon.pid(), "VmRSS");
    m.hwm = proc_status_bytes(daemon.pid(), "VmHWM");
    REQUIRE(conn->unmap(r).ok());
    return m;
}

}  // namespace

TEST_CASE("the daemon's memory is bounded by its staging buffers and cache budget, not by the size of the regions", "[prefetch][memory]")
{
    // Under AddressSanitizer, freed memory sits in a quarantine of up to 256 MiB: that would
    // be counted here as the daemon's. The daemons of this test run without it.
    const char* asan = std::getenv("ASAN_OPTIONS");
    const std::string saved = asan ? asan : "";
    ::setenv("ASAN_OPTIONS", (saved.empty() ? std::string() : saved + ":").append("quarantine_size_mb=0").c_str(), 1);
    // 1 TiB; under ThreadSanitizer, whose shadow memory leaves the program less address
    // space, a 1 TiB mapping fails now and then: 64 GiB, still far more than this machine's RAM.
#if defined(__SANITIZE_THREAD__)
    const std::uint64_t big_size = std::uint64_t{1} << 36;
#else
    const std::uint64_t big_size = std::uint64_t{1} << 40;
#endif
    MemoryRun small, big;
    try {
        small = memory_run(k_mib);
        big = memory_run(big_size);
    } catch (...) {
        asan ? ::setenv("ASAN_OPTIONS", saved.c_str(), 1) : ::unsetenv("ASAN_OPTIONS");
        throw;
    }
    asan ? ::setenv("ASAN_OPTIONS", saved.c_str(), 1) : ::unsetenv("ASAN_OPTIONS");
    INFO("1 MiB region: idle " << small.idle << ", after " << small.after << ", peak " << small.hwm << ", faults "
                               << small.faults);
    INFO(big_size / k_mib << " MiB region: idle " << big.idle << ", after " << big.after << ", peak " << big.hwm << ", faults "
                               << big.faults);
    INFO("staging buffers " << k_staging_bytes);
    CHECK(big.faults >= 20000);  // the spread touches each faulted
    // The small region's cache holds at most 1 MiB, the big one's up to the budget.
    CHECK(big.after < small.after + k_cache_budget + k_slack);
    CHECK(big.hwm < small.hwm + k_cache_budget + k_slack);
    CHECK(big.hwm < big.idle + k_staging_bytes + k_cache_budget + k_slack);
    CHECK(small.hwm < small.idle + k_staging_bytes + k_cache_budget + k_slack);
}
