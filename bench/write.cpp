// Write faults per page: pagerd's Shared-region tracking strategies against an in-process
// mprotect + SIGSEGV loop and the first touch of anonymous memory.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

using libclient::Tracking;

// ---- the mprotect + SIGSEGV baseline's handler: only for its own buffer ----------------

std::atomic<std::uintptr_t> g_lo{0}, g_hi{0};
struct sigaction g_previous {};

void on_segv(int sig, siginfo_t* si, void* uc)
{
    const auto a = reinterpret_cast<std::uintptr_t>(si->si_addr);
    if (si->si_code == SEGV_ACCERR && a >= g_lo.load(std::memory_order_relaxed) &&
        a < g_hi.load(std::memory_order_relaxed)) {
        const int saved = errno;
        void* page = reinterpret_cast<void*>(a & ~(k_page - 1));
        if (::mprotect(page, k_page, PROT_READ | PROT_WRITE) != 0)  // out of mappings: open it all
            ::mprotect(reinterpret_cast<void*>(g_lo.load()), g_hi.load() - g_lo.load(), PROT_READ | PROT_WRITE);
        errno = saved;
        return;
    }
    // Not ours: whoever had the signal before, else the default action (the faulting
    // instruction runs again and the process dies of SIGSEGV as it would have).
    if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction) {
        g_previous.sa_sigaction(sig, si, uc);
    } else if (!(g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_handler != SIG_DFL &&
               g_previous.sa_handler != SIG_IGN) {
        g_previous.sa_handler(sig);
    } else {
        ::signal(SIGSEGV, SIG_DFL);
        if (si->si_code <= 0) ::raise(sig);
    }
}

void* map_anonymous(std::uint64_t bytes, int prot)
{
    void* p = ::mmap(nullptr, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    ::madvise(p, bytes, MADV_NOHUGEPAGE);  // one fault per 4 KiB page, whatever THP says
    return p;
}

Error sys_error(const std::string& what)
{
    const int e = errno;
    return Error::system(e, what + ": " + std::strerror(e));
}

// Populated anonymous memory, made PROT_READ; each first write takes SIGSEGV, the handler
// makes the page writable, the write runs again. The handler is ours only meanwhile.
Result<double> mprotect_baseline(std::uint64_t pages, unsigned threads)
{
    const std::uint64_t bytes = pages * k_page;
    void* p = map_anonymous(bytes, PROT_READ | PROT_WRITE);
    if (!p) return sys_error("mmap of anonymous memory");
    std::memset(p, 0x5a, bytes);
    if (::mprotect(p, bytes, PROT_READ) != 0) {
        const Error e = sys_error("mprotect");
        ::munmap(p, bytes);
        return e;
    }
    struct sigaction act {};
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&act.sa_mask);
    g_lo = reinterpret_cast<std::uintptr_t>(p);
    g_hi = g_lo + bytes;
    if (::sigaction(SIGSEGV, &act, &g_previous) != 0) {
        const Error e = sys_error("sigaction(SIGSEGV)");
        ::munmap(p, bytes);
        return e;
    }
    const double seconds = timed_writes(p, pages, threads, next_salt());
    ::sigaction(SIGSEGV, &g_previous, nullptr);
    g_lo = g_hi = 0;
    ::munmap(p, bytes);
    return seconds;
}

// Fresh MAP_PRIVATE | MAP_ANONYMOUS pages: the first touch is the write.
Result<double> anon_baseline(std::uint64_t pages, unsigned threads)
{
    const std::uint64_t bytes = pages * k_page;
    void* p = map_anonymous(bytes, PROT_READ | PROT_WRITE);
    if (!p) return sys_error("mmap of anonymous memory");
    const double seconds = timed_writes(p, pages, threads, next_salt());
    ::munmap(p, bytes);
    return seconds;
}

// A fresh Shared region of the first `pages` pages: with `loaded`, every page is read
// first (not timed); then one timed write per page; unmap (flushes, not timed); then the
// file must hold the written bytes.
Result<double> pagerd_writes(libclient::Connection& conn, int fd, std::uint64_t pages, Tracking tracking,
                             bool loaded, unsigned threads)
{
    libclient::MapOptions mo{0, pages * k_page, libclient::Access::Shared};
    mo.tracking = tracking;
    auto region = conn.map_fd(fd, mo);
    if (!region) return Error{region.error().domain, region.error().code, "map_fd: " + region.error().message};
    if (loaded) {
        const auto* base = static_cast<const volatile unsigned char*>(region->addr);
        std::uint64_t sum = 0;
        for (std::uint64_t p = 0; p < pages; ++p) sum += base[p * k_page];
        if (sum == 0) return Error::system(EBADMSG, "the loaded pages read as zeros");  // the file never has zero bytes there
    }
    const unsigned salt = next_salt();
    const double seconds = timed_writes(region->addr, pages, threads, salt);
    if (auto u = conn.unmap(region.value()); !u) return Error{u.error().domain, u.error().code, "unmap: " + u.error().message};
    if (const std::string bad = check_written(fd, nullptr, pages, salt); !bad.empty())
        return Error::system(EBADMSG, "after unmap the file does not hold the written bytes: " + bad);
    return seconds;
}

}  // namespace

unsigned next_salt()
{
    static unsigned salt = 0;
    return ++salt;
}

double median_of(std::vector<double> v)
{
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

double timed_writes(void* addr, std::uint64_t pages, unsigned threads, unsigned salt)
{
    auto* base = static_cast<volatile unsigned char*>(addr);
    threads = static_cast<unsigned>(std::clamp<std::uint64_t>(threads, 1, std::max<std::uint64_t>(pages, 1)));
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            const std::uint64_t begin = pages * t / threads, end = pages * (t + 1) / threads;
            ready.fetch_add(1);
            go.wait(false);
            for (std::uint64_t i = begin; i < end; ++i) {
                const auto p = static_cast<std::uint32_t>(i);
                base[write_offset(p)] = write_value(p, salt);
            }
        });
    while (ready.load() < threads) std::this_thread::yield();
    const auto t0 = std::chrono::steady_clock::now();
    go.store(true);
    go.notify_all();
    for (auto& th : pool) th.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string check_written(int fd, const void* mem, std::uint64_t pages, unsigned salt)
{
    const std::uint64_t samples = std::min<std::uint64_t>(64, pages);
    std::vector<unsigned char> buf(k_page);
    for (std::uint64_t s = 0; s < samples; ++s) {
        const auto p = static_cast<std::uint32_t>(samples == 1 ? 0 : s * (pages - 1) / (samples - 1));
        const off_t off = static_cast<off_t>(std::uint64_t{p} * k_page);
        std::size_t got = 0;
        while (got < k_page) {
            const ssize_t r = ::pread(fd, buf.data() + got, k_page - got, off + static_cast<off_t>(got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return "pread of page " + std::to_string(p) + " failed: " + (r ? std::strerror(errno) : "end of file");
            got += static_cast<std::size_t>(r);
        }
        const unsigned char want = write_value(p, salt);
        const unsigned char have = buf[write_offset(p) % k_page];
        if (have != want)
            return "page " + std::to_string(p) + ": the file has byte " + std::to_string(have) + " where " +
                   std::to_string(want) + " was written";
        if (mem && std::memcmp(static_cast<const unsigned char*>(mem) + off, buf.data(), k_page) != 0)
            return "page " + std::to_string(p) + ": the file differs from the memory written";
    }
    return {};
}

std::vector<WriteCase> run_write_cases(libclient::Connection& conn, const WriteSetup& s)
{
    std::vector<WriteCase> out;
    std::vector<unsigned> counts = {1};
    if (s.threads > 1) counts.push_back(s.threads);
    auto run = [&](WriteCase c, const auto& measure) {
        if (s.progress) std::fprintf(stderr, "[write] %s\n", c.name.c_str());
        std::vector<double> times;
        for (unsigned rep = 0; rep < s.repeat; ++rep) {
            Result<double> r = measure();
            if (!r) {
                if (r.error().code == ENOTSUP) {
                    c.note = r.error().message;  // the kernel lacks it: skipped, not an error
                } else {
                    s.error("write " + c.name + ": " + r.error().message);
                }
                times.clear();
                break;
            }
            times.push_back(r.value());
        }
        c.seconds = median_of(times);
        out.push_back(c);
        return out.back().note.empty();
    };
    // Baselines first, before any Sigsegv region installs libclient's handler.
    for (const unsigned t : counts)
        run({"mprotect-" + std::to_string(t) + "t", "mprotect", "", t, s.pages},
            [&] { return mprotect_baseline(s.pages, t); });
    for (const unsigned t : counts)
        run({"anon-" + std::to_string(t) + "t", "anon", "", t, s.pages}, [&] { return anon_baseline(s.pages, t); });

    for (const Tracking tr : {Tracking::UffdWp, Tracking::Sigsegv, Tracking::Async}) {
        const std::string name = libclient::tracking_name(tr);
        std::string skipped;
        auto one = [&](const char* kind, unsigned t) {
            WriteCase c{name + "-" + kind + "-" + std::to_string(t) + "t", kind, name, t, s.pages};
            if (!skipped.empty()) {
                c.note = skipped;
                out.push_back(c);
                return;
            }
            if (!conn.daemon_alive()) {
                s.error("write " + c.name + ": the connection to pagerd was lost");
                out.push_back(c);
                return;
            }
            const bool loaded = kind[0] == 'l';
            if (!run(c, [&] { return pagerd_writes(conn, s.fd, s.pages, tr, loaded, t); })) skipped = out.back().note;
        };
        for (const unsigned t : counts) one("loaded", t);
        one("fresh", 1);
    }
    return out;
}

}  // namespace pagerd::bench
