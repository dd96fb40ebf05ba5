// Shared regions in the daemon's page cache (daemon/cache_writes.cpp): every Shared client
// of a file writes into the same pages, sees the others' writes at once, and no write is
// lost to a flush, an eviction, MADV_DONTNEED or an unmap racing it.
//
// The clients are connections of this process: each has its own userfaultfd and its own
// mapping of the cache, as separate processes would (ThreadSanitizer forbids forking after
// threads start, and the race below needs threads).
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Tracking;

#if defined(__SANITIZE_THREAD__)
constexpr bool k_tsan = true;
#else
constexpr bool k_tsan = false;
#endif

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;

libclient::Region map_shared(libclient::Connection& c, const std::string& path, std::uint64_t offset,
                             std::uint64_t length)
{
    libclient::MapOptions o;
    o.offset = offset;
    o.length = length;
    o.access = Access::Shared;
    o.tracking = Tracking::UffdWp;
    auto r = c.map_file(path, o);
    if (!r) FAIL("map " << path << " Shared: " << r.error().message);
    return r.value();
}

// The word a writer puts at the start of page `pg`, its `n`-th write there.
std::uint64_t stamp(std::uint64_t pg, std::uint64_t n) { return 0x5EED'0000'0000'0000ull ^ (pg << 24) ^ n; }

std::uint64_t word_at(const std::vector<std::uint8_t>& bytes, std::uint64_t off)
{
    std::uint64_t v;
    std::memcpy(&v, bytes.data() + off, 8);
    return v;
}

std::uint64_t word_at(const void* p)
{
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

std::string figures(const libclient::Status& s)
{
    return "cache: budget " + std::to_string(s.cache_budget) + ", resident " + std::to_string(s.cache_bytes) +
           ", dirty " + std::to_string(s.cache_dirty_bytes) + ", evictions " + std::to_string(s.cache_evictions) +
           ", write-backs " + std::to_string(s.cache_writebacks) + ", loads " + std::to_string(s.cache_loads);
}

}  // namespace

TEST_CASE("two Shared clients of one file see each other's writes at once, and a flush writes the file",
          "[cache][shared]")
{
    TempDir dir;
    const std::uint64_t size = 4 * k_mib;
    make_file(dir.file("data"), size, 71);
    auto model = read_file(dir.file("data"));
    Daemon daemon;
    auto a = daemon.connect("a");
    auto b = daemon.connect("b");
    auto reader = daemon.connect("reader");
    auto ra = map_shared(*a, dir.file("data"), 0, size);
    auto rb = map_shared(*b, dir.file("data"), 0, size);
    CHECK(ra.tracking == Tracking::UffdWp);
    auto rr = reader->map_file(dir.file("data"), {0, size, Access::ReadOnly});
    REQUIRE(rr.ok());
    auto* pa = static_cast<std::uint8_t*>(ra.addr);
    auto* pb = static_cast<std::uint8_t*>(rb.addr);
    const auto* pr = static_cast<const std::uint8_t*>(rr->addr);
    {
        const auto s = daemon.status();
        INFO(figures(s));
        CHECK(s.cache_files == 1);  // one cache for the three regions
        auto caches = a->caches();
        REQUIRE(caches.ok());
        REQUIRE(caches->size() == 1);
        CHECK((*caches)[0].regions == 3);
        CHECK((*caches)[0].clients == 3);
    }

    // A writes, B and the read-only client see it without any flush; and the other way.
    CHECK(pb[3 * k_page] == model[3 * k_page]);  // B has the page mapped before A writes
    std::memset(pa + 3 * k_page, 0xA1, 100);
    CHECK(pb[3 * k_page] == 0xA1);
    CHECK(pb[3 * k_page + 99] == 0xA1);
    CHECK(pr[3 * k_page + 50] == 0xA1);
    std::memset(pb + 7 * k_page + 10, 0xB2, 5000);  // two pages, first touch a write
    CHECK(pa[7 * k_page + 10] == 0xB2);
    CHECK(pa[8 * k_page + 100] == 0xB2);
    std::memset(model.data() + 3 * k_page, 0xA1, 100);
    std::memset(model.data() + 7 * k_page + 10, 0xB2, 5000);
    CHECK(read_file(dir.file("data")) != model);  // nothing flushed yet
    {
        const auto s = daemon.status();
        INFO(figures(s));
        CHECK(s.cache_dirty_bytes == 3 * k_page);
        auto caches = a->caches();
        REQUIRE(caches.ok());
        CHECK((*caches)[0].dirty == 3 * k_page);
    }

    // A's flush writes what the file's cache holds dirty in A's range, whoever wrote it
    // (as msync does for every mapping of a file).
    auto fa = a->flush(ra);
    REQUIRE(fa.ok());
    CHECK(fa->pages == 3);
    CHECK(read_file(dir.file("data")) == model);
    CHECK(daemon.status().cache_dirty_bytes == 0);
    auto fb = b->flush(rb);
    REQUIRE(fb.ok());
    CHECK(fb->pages == 0);

    // Written again after the flush: dirty again, through either view.
    pb[3 * k_page + 1] = 0x33;
    model[3 * k_page + 1] = 0x33;
    CHECK(pa[3 * k_page + 1] == 0x33);
    fa = a->flush(ra);
    REQUIRE(fa.ok());
    CHECK(fa->pages == 1);
    CHECK(read_file(dir.file("data")) == model);

    // B's last write reaches the file when B unmaps, without a flush of its own... (unmap
    // flushes first) and when B's connection just goes away, the daemon writes it back.
    pb[9 * k_page] = 0x99;
    model[9 * k_page] = 0x99;
    b.reset();  // the connection closes: the daemon writes back what is dirty in B's range
    bool written = false;
    for (int i = 0; i < 500 && !written; ++i) {
        written = read_file(dir.file("data")) == model;
        if (!written) std::this_thread::sleep_for(10ms);
    }
    CHECK(written);
    CHECK(pa[9 * k_page] == 0x99);
    REQUIRE(a->unmap(ra).ok());
    CHECK(read_file(dir.file("data")) == model);
}

TEST_CASE("dirty pages are written back before the cache evicts them, and every write reaches the file",
          "[cache][shared][eviction]")
{
    TempDir dir;
    const std::uint64_t size = (k_tsan ? 24 : 64) * k_mib, budget = 8 * k_mib;
    make_file(dir.file("data"), size, 72);
    auto model = read_file(dir.file("data"));
    Daemon daemon({"--memory-max", std::to_string(budget)});
    auto c = daemon.connect();
    auto r = map_shared(*c, dir.file("data"), 0, size);
    auto* p = static_cast<std::uint8_t*>(r.addr);
    // Every page written once, no flush: far more dirty data than the budget.
    std::uint64_t peak = 0, peak_dirty = 0;
    for (std::uint64_t pg = 0; pg < size / k_page; ++pg) {
        const std::uint64_t v = stamp(pg, 1);
        std::memcpy(p + pg * k_page + 8 * (pg % 500), &v, 8);
        std::memcpy(model.data() + pg * k_page + 8 * (pg % 500), &v, 8);
        if (pg % 512 == 0) {
            const auto s = daemon.status();
            peak = std::max(peak, s.cache_bytes);
            peak_dirty = std::max(peak_dirty, s.cache_dirty_bytes);
        }
    }
    // Write-backs made room: the cache holds about its budget, not the whole file.
    REQUIRE(daemon.wait_until([&](const libclient::Status& s) { return s.cache_writebacks > 0; }));
    {
        const auto s = daemon.status();
        INFO(figures(s) << "; peak resident " << peak << ", peak dirty " << peak_dirty);
        CHECK(s.cache_evictions > 0);
        CHECK(peak < size / 2);
        // Writers wait while dirty pages are over a quarter of the budget (up to a second
        // each): the dirty pages stay near that, far below the file's size.
        CHECK(peak_dirty <= budget / 2);
    }
    // Reading every page back (evicted ones load again, from the file the write-back
    // wrote): every write is there.
    std::uint64_t wrong = 0;
    for (std::uint64_t pg = 0; pg < size / k_page; ++pg)
        if (std::memcmp(p + pg * k_page, model.data() + pg * k_page, k_page) != 0) ++wrong;
    CHECK(wrong == 0);
    REQUIRE(c->flush(r).ok());
    CHECK(read_file(dir.file("data")) == model);
    const auto s = daemon.status();
    INFO(figures(s));
    CHECK(s.cache_dirty_bytes == 0);
    CHECK(s.cache_bytes <= budget + 2 * k_mib);  // plus the read-ahead windows in flight
    REQUIRE(c->unmap(r).ok());
}

TEST_CASE("eviction racing writes, flushes, MADV_DONTNEED and unmaps through three clients loses no write",
          "[cache][shared][race]")
{
    TempDir dir;
    const std::uint64_t size = 16 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 73);
    auto model = read_file(dir.file("data"));
    Daemon daemon({"--memory-max", "4MiB", "--workers", "2"});
    auto a = daemon.connect("a");
    auto b = daemon.connect("b");
    auto c = daemon.connect("c");  // maps and unmaps pieces, writing through them
    auto ra = map_shared(*a, dir.file("data"), 0, size);
    auto rb = map_shared(*b, dir.file("data"), 0, size);
    std::uint8_t* views[2] = {static_cast<std::uint8_t*>(ra.addr), static_cast<std::uint8_t*>(rb.addr)};

    // Writer t owns the pages pg % 3 == t: the last value it wrote to each is the truth.
    constexpr unsigned k_writers = 3;
    const unsigned rounds = k_tsan ? 3000 : 30000;
    std::vector<std::uint64_t> last(pages, 0);  // writes per page (each writer its own pages)
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> bad_reads{0};
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < k_writers; ++t)
        threads.emplace_back([&, t] {
            std::mt19937_64 rng(t + 1);
            for (unsigned i = 0; i < rounds; ++i) {
                std::uint64_t pg = rng() % pages;
                pg -= pg % k_writers;
                pg += t;
                if (pg >= pages) continue;
                const std::uint64_t v = stamp(pg, ++last[pg]);
                std::memcpy(views[rng() & 1] + pg * k_page, &v, 8);
                // Read back through the other view: the same page, so the same word.
                if (word_at(views[rng() & 1] + pg * k_page) != v) bad_reads.fetch_add(1);
            }
        });
    threads.emplace_back([&] {  // flushes
        while (!stop) {
            (void)a->flush(ra);
            (void)b->flush(rb);
            std::this_thread::sleep_for(2ms);
        }
    });
    threads.emplace_back([&] {  // drops page-table entries: the next touch maps the cached page again
        std::mt19937_64 rng(99);
        while (!stop) {
            const std::uint64_t pg = rng() % (pages - 64);
            ::madvise(views[rng() & 1] + pg * k_page, 64 * k_page, MADV_DONTNEED);
            std::this_thread::sleep_for(1ms);
        }
    });
    std::atomic<std::uint64_t> c_writes{0};
    std::vector<std::uint64_t> c_last(pages, 0);
    threads.emplace_back([&] {  // a third client maps a piece, writes the 4th word of each page, unmaps
        std::mt19937_64 rng(7);
        while (!stop) {
            const std::uint64_t first = rng() % (pages - 256);
            auto piece = c->map_file(dir.file("data"), {first * k_page, 256 * k_page, Access::Shared, Tracking::UffdWp});
            if (!piece) continue;
            auto* q = static_cast<std::uint8_t*>(piece->addr);
            for (std::uint64_t k = 0; k < 256; k += 17) {
                const std::uint64_t v = stamp(first + k, ++c_last[first + k]) ^ 0xCCC;
                std::memcpy(q + k * k_page + 24, &v, 8);
                c_writes.fetch_add(1);
            }
            if (rng() & 1) (void)c->unmap(piece.value());  // flushes, then unmaps
            else (void)c->flush(piece.value()), (void)c->unmap(piece.value());
        }
    });
    for (unsigned t = 0; t < k_writers; ++t) threads[t].join();
    stop = true;
    for (std::size_t t = k_writers; t < threads.size(); ++t) threads[t].join();
    CHECK(bad_reads == 0);
    REQUIRE(a->flush(ra).ok());
    REQUIRE(b->flush(rb).ok());
    const auto s = daemon.status();
    INFO(figures(s) << "; third client's writes " << c_writes.load());
    CHECK(s.cache_evictions > 0);
    CHECK(s.cache_dirty_bytes == 0);
    // The file: each page's first word is its writer's last write (or the file's own bytes
    // where nobody wrote), its 4th word the third client's last.
    const auto file = read_file(dir.file("data"));
    std::uint64_t lost = 0, lost_c = 0, first_lost = pages;
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        const std::uint64_t want = last[pg] ? stamp(pg, last[pg]) : word_at(model, pg * k_page);
        if (word_at(file, pg * k_page) != want) {
            ++lost;
            first_lost = std::min(first_lost, pg);
        }
        const std::uint64_t want_c = c_last[pg] ? stamp(pg, c_last[pg]) ^ 0xCCC : word_at(model, pg * k_page + 24);
        if (word_at(file, pg * k_page + 24) != want_c) ++lost_c;
    }
    INFO("first page that lost a write: " << first_lost);
    CHECK(lost == 0);
    CHECK(lost_c == 0);
    // And the views agree with the file.
    CHECK(std::memcmp(views[0], file.data(), size) == 0);
}
