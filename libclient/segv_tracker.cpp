#include "segv_tracker.hpp"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <sched.h>

#include "pagerd/util/dirty_bitmap.hpp"

#if !defined(__x86_64__)
#error "libclient's SIGSEGV write tracking reads the x86-64 page-fault error code (REG_ERR); \
port faulted_by_write() in libclient/segv_tracker.cpp to this architecture's fault information"
#endif

namespace pagerd::libclient::segv {
namespace {

constexpr int k_slots = 1024;
constexpr std::uint64_t k_chunk_pages = 64;  // first widening step

// Read by the handler without locks: start is published last and withdrawn first.
struct Slot {
    std::atomic<std::uintptr_t> start{0};
    std::atomic<std::uintptr_t> end{0};
    std::atomic<void*> bitmap{nullptr};
};

Slot g_slots[k_slots];
std::atomic<int> g_active{0};  // handlers running right now
std::atomic<std::uint64_t> g_handled{0}, g_widened{0};
std::uintptr_t g_page = 4096;
struct sigaction g_previous {};
std::mutex g_mutex;  // add/remove only, never the handler

__attribute__((tls_model("initial-exec"))) thread_local int t_in_handler = 0;
__attribute__((tls_model("initial-exec"))) thread_local int t_chaining = 0;

bool faulted_by_write(const ucontext_t* uc)
{
    return (uc->uc_mcontext.gregs[REG_ERR] & 0x2) != 0;  // x86-64 page-fault error code: W/R bit
}

// Marks [first, first+count) dirty and makes it writable; false if mprotect refused.
bool open_up(Slot& s, std::uintptr_t start, std::uint64_t first, std::uint64_t count)
{
    util::DirtyBitmap bm(s.bitmap.load(std::memory_order_acquire),
                         (s.end.load(std::memory_order_relaxed) - start) / g_page);
    bm.mark_range(first, count);  // dirty first, then writable
    if (::mprotect(reinterpret_cast<void*>(start + first * g_page), count * g_page, PROT_READ | PROT_WRITE) != 0)
        return false;
    // And dirty again: a flush may have collected the bit between the two steps above and
    // protected the page before our mprotect opened it, leaving it writable but clean.
    bm.mark_range(first, count);
    return true;
}

bool take_write(std::uintptr_t addr)
{
    for (Slot& s : g_slots) {
        const std::uintptr_t start = s.start.load(std::memory_order_acquire);
        if (!start || addr < start || addr >= s.end.load(std::memory_order_acquire)) continue;
        const std::uint64_t pages = (s.end.load(std::memory_order_relaxed) - start) / g_page;
        const std::uint64_t page = (addr - start) / g_page;
        if (open_up(s, start, page, 1)) return true;
        // The kernel would not split the mapping any further (vm.max_map_count): widen
        // the protection change, marking every page it covers dirty, never losing a write.
        g_widened.fetch_add(1, std::memory_order_relaxed);
        const std::uint64_t chunk = page / k_chunk_pages * k_chunk_pages;
        const std::uint64_t n = chunk + k_chunk_pages < pages ? k_chunk_pages : pages - chunk;
        if (open_up(s, start, chunk, n)) return true;
        return open_up(s, start, 0, pages);
    }
    return false;
}

// Hands the signal to whoever had it before us, or dies as the process would have.
void chain(int sig, siginfo_t* si, void* uc)
{
    // t_chaining: a previous handler that itself chains back to us must not loop.
    if (!t_chaining && (g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction) {
        t_chaining = 1;
        g_previous.sa_sigaction(sig, si, uc);
        t_chaining = 0;
        return;
    }
    if (!t_chaining && !(g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_handler != SIG_DFL &&
        g_previous.sa_handler != SIG_IGN) {
        t_chaining = 1;
        g_previous.sa_handler(sig);
        t_chaining = 0;
        return;
    }
    // Default action: restore it; a fault re-executes the instruction and dies by SIGSEGV
    // at the same address; a signal sent with kill() is sent again.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGSEGV, &dfl, nullptr);
    if (si->si_code <= 0) ::raise(sig);
}

void on_segv(int sig, siginfo_t* si, void* uc)
{
    if (si->si_code == SEGV_ACCERR && !t_in_handler && faulted_by_write(static_cast<ucontext_t*>(uc))) {
        const int saved_errno = errno;
        t_in_handler = 1;
        g_active.fetch_add(1, std::memory_order_acq_rel);
        const bool handled = take_write(reinterpret_cast<std::uintptr_t>(si->si_addr));
        g_active.fetch_sub(1, std::memory_order_acq_rel);
        t_in_handler = 0;
        errno = saved_errno;
        if (handled) {
            g_handled.fetch_add(1, std::memory_order_relaxed);
            return;
        }
    }
    chain(sig, si, uc);
}

// Puts our handler first, remembering the one it replaces. Called for every new region:
// a handler installed after ours that did not chain to us would hide the writes.
Result<void> install()
{
    struct sigaction current {};
    ::sigaction(SIGSEGV, nullptr, &current);
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_segv) return {};
    g_page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    struct sigaction act {};
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;  // no SA_NODEFER: a fault inside us dies
    sigemptyset(&act.sa_mask);
    g_previous = current;  // before ours can run
    if (::sigaction(SIGSEGV, &act, nullptr) != 0) return Error::system(errno, "cannot install the SIGSEGV handler");
    return {};
}

}  // namespace

Result<int> add(std::uintptr_t start, std::uint64_t length, void* bitmap)
{
    std::lock_guard lock(g_mutex);
    if (auto r = install(); !r) return r.error();
    for (int i = 0; i < k_slots; ++i) {
        Slot& s = g_slots[i];
        if (s.start.load(std::memory_order_relaxed)) continue;
        s.bitmap.store(bitmap, std::memory_order_relaxed);
        s.end.store(start + length, std::memory_order_relaxed);
        s.start.store(start, std::memory_order_release);
        return i;
    }
    return Error::system(ENOMEM, "at most " + std::to_string(k_slots) + " regions with SIGSEGV tracking per process");
}

void forget_in_child(int slot)
{
    // No lock, no wait: the threads that held them are not in a forked child.
    g_slots[slot].start.store(0, std::memory_order_release);
    g_slots[slot].end.store(0, std::memory_order_relaxed);
    g_slots[slot].bitmap.store(nullptr, std::memory_order_relaxed);
}

void remove(int slot)
{
    std::lock_guard lock(g_mutex);
    g_slots[slot].start.store(0, std::memory_order_release);
    while (g_active.load(std::memory_order_acquire) != 0) ::sched_yield();
    g_slots[slot].end.store(0, std::memory_order_relaxed);
    g_slots[slot].bitmap.store(nullptr, std::memory_order_relaxed);
}

std::uint64_t handled() { return g_handled.load(); }
std::uint64_t widened() { return g_widened.load(); }

}  // namespace pagerd::libclient::segv
