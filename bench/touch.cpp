// Page sets and timed first touches of a fresh mapping, by kernel mmap and by pagerd.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "bench.hpp"

namespace pagerd::bench {
Measure touch(const void* addr, const std::vector<std::uint32_t>& pages, unsigned threads)
{
    const auto* base = static_cast<const volatile unsigned char*>(addr);
    threads = static_cast<unsigned>(std::clamp<std::size_t>(threads, 1, std::max<std::size_t>(pages.size(), 1)));
    constexpr std::size_t stride = 8;  // one cache line per thread's sum
    std::vector<std::uint64_t> sums(threads * stride);
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            const std::size_t begin = pages.size() * t / threads;
            const std::size_t end = pages.size() * (t + 1) / threads;
            ready.fetch_add(1);
            go.wait(false);
            std::uint64_t sum = 0;
            for (std::size_t i = begin; i < end; ++i) sum += base[touch_offset(pages[i])];
            sums[t * stride] = sum;
        });
    while (ready.load() < threads) std::this_thread::yield();
    const auto t0 = std::chrono::steady_clock::now();
    go.store(true);
    go.notify_all();
    for (auto& th : pool) th.join();
    const auto t1 = std::chrono::steady_clock::now();
    Measure m;
    m.seconds = std::chrono::duration<double>(t1 - t0).count();
    for (unsigned t = 0; t < threads; ++t) m.checksum += sums[t * stride];
    return m;
}

namespace {

// Compares up to 64 of the touched pages, spread over the set, with pread of the file.
std::string verify_sample(const void* addr, int fd, const std::vector<std::uint32_t>& pages)
{
    const auto* base = static_cast<const unsigned char*>(addr);
    const std::size_t samples = std::min<std::size_t>(64, pages.size());
    std::vector<unsigned char> buf(k_page);
    for (std::size_t s = 0; s < samples; ++s) {
        const std::uint32_t p = pages[s * pages.size() / samples];
        const off_t off = static_cast<off_t>(std::uint64_t{p} * k_page);
        std::size_t got = 0;
        while (got < k_page) {
            const ssize_t r = ::pread(fd, buf.data() + got, k_page - got, off + static_cast<off_t>(got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return "pread of page " + std::to_string(p) + " failed: " + std::strerror(errno);
            got += static_cast<std::size_t>(r);
        }
        const unsigned char* mem = base + std::uint64_t{p} * k_page;
        if (std::memcmp(mem, buf.data(), k_page) != 0) {
            std::size_t i = 0;
            while (mem[i] == buf[i]) ++i;
            return "page " + std::to_string(p) + " byte " + std::to_string(i) + ": pagerd has " +
                   std::to_string(mem[i]) + ", the file has " + std::to_string(buf[i]);
        }
    }
    return {};
}

}  // namespace

std::vector<std::uint32_t> sequential_pages(std::uint64_t pages)
{
    std::vector<std::uint32_t> v(pages);
    for (std::uint64_t i = 0; i < pages; ++i) v[i] = static_cast<std::uint32_t>(i);
    return v;
}

std::vector<std::uint32_t> random_pages(std::uint64_t pages, std::uint64_t count)
{
    // Sparse Fisher-Yates: the first `count` draws of a shuffle of 0..pages-1, in O(count).
    count = std::min(count, pages);
    std::uint64_t x = 0x2545f4914f6cdd1dull;  // xorshift64*, fixed seed
    auto next = [&x] {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        return x * 0x2545f4914f6cdd1dull;
    };
    std::unordered_map<std::uint64_t, std::uint64_t> swapped;
    auto at = [&swapped](std::uint64_t i) {
        const auto it = swapped.find(i);
        return it == swapped.end() ? i : it->second;
    };
    std::vector<std::uint32_t> v;
    v.reserve(count);
    for (std::uint64_t i = 0; i < count; ++i) {
        const std::uint64_t j = i + next() % (pages - i);
        const std::uint64_t vj = at(j);
        swapped[j] = at(i);
        v.push_back(static_cast<std::uint32_t>(vj));
    }
    return v;
}

Result<Measure> measure_mmap(int fd, std::uint64_t bytes, const std::vector<std::uint32_t>& pages,
                             unsigned threads, int advice)
{
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return Error::system(errno, std::string("mmap of the file: ") + std::strerror(errno));
    if (advice != MADV_NORMAL && ::madvise(p, bytes, advice) != 0) {
        const int e = errno;
        ::munmap(p, bytes);
        return Error::system(e, std::string("madvise of the mapping: ") + std::strerror(e));
    }
    const Measure m = touch(p, pages, threads);
    ::munmap(p, bytes);
    return m;
}

Result<PagerdRun> measure_pagerd(libclient::Connection& conn, int fd, std::uint64_t bytes,
                                 const std::vector<std::uint32_t>& pages, unsigned threads,
                                 const PagerdSetup& s)
{
    using Clock = std::chrono::steady_clock;
    PagerdRun run;
    const auto st0 = conn.status();
    const double cpu0 = s.daemon_pid > 0 ? process_cpu_seconds(s.daemon_pid) : -1;
    libclient::MapOptions mo{0, bytes, libclient::Access::ReadOnly};
    mo.prefetch = s.prefetch;
    const auto t0 = Clock::now();
    auto region = conn.map_fd(fd, mo);
    if (!region)
        return Error{region.error().domain, region.error().code, std::string("map_fd (prefetch=") + libclient::prefetch_name(s.prefetch) +
                                              "): " + region.error().message};
    Result<libclient::Status> st_filled = Error{};
    if (s.fill) {
        // 10 minutes: a daemon that never finishes the fill fails the case, not the run.
        auto f = conn.prefetch(region->addr, region->size, true, 600000);
        run.fill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        if (!f) {
            const Error e{f.error().domain, f.error().code, "prefetch(region, " + std::to_string(region->size) +
                                              ", wait=true): " + f.error().message};
            [[maybe_unused]] auto u = conn.unmap(region.value());
            return e;
        }
        st_filled = conn.status();
    }
    run.m = touch(region->addr, pages, threads);
    const double cpu1 = cpu0 >= 0 ? process_cpu_seconds(s.daemon_pid) : -1;
    const auto st1 = conn.status();
    if (cpu0 >= 0 && cpu1 >= 0) run.cpu_seconds = cpu1 - cpu0;
    if (st0 && st1) {
        run.have_faults = true;
        run.faults = st1->faults - st0->faults;
        run.pages_prefetched = st1->pages_prefetched - st0->pages_prefetched;
    }
    if (st_filled && st1) run.faults_after_fill = st1->faults - st_filled->faults;
    if (auto regions = conn.regions()) {
        const auto me = static_cast<std::uint32_t>(::getpid());
        for (const auto& r : regions.value())
            if (r.id == region->id && r.pid == me) {
                run.region = r;
                run.have_region = true;
            }
        if (!run.have_region)
            run.region_note = "region " + std::to_string(region->id) + " is not in the daemon's list of regions";
    } else {
        run.region_note = "Connection::regions() failed: " + regions.error().message;
    }
    const std::string mismatch = verify_sample(region->addr, fd, pages);
    auto unmapped = conn.unmap(region.value());
    if (!mismatch.empty()) return Error::system(EBADMSG, "the data differs from the file: " + mismatch);
    if (!unmapped) return Error{unmapped.error().domain, unmapped.error().code, "unmap: " + unmapped.error().message};
    return run;
}

}  // namespace pagerd::bench
