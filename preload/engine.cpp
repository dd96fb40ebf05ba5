#include "engine.hpp"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/mman.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "config.hpp"
#include "real.hpp"
#include "table.hpp"

namespace pagerd::preload {

constinit thread_local bool t_inside = false;

namespace {

using libclient::Access;
using libclient::Connection;

constexpr std::uintptr_t k_page = 4096;
constexpr std::uintptr_t round_up(std::uintptr_t n) { return (n + k_page - 1) & ~(k_page - 1); }
std::uintptr_t as_int(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
void* as_ptr(std::uintptr_t a) { return reinterpret_cast<void*>(a); }

// One mutex for every slow path. fork(): the child gets it unlocked (child_reset); once
// libclient registered its own fork handlers (at the first connect), ours are registered
// after them, so that ours run first before fork and take this mutex before libclient's.
constinit pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;

struct Lock {
    Lock() noexcept { ::pthread_mutex_lock(&g_mutex); }
    ~Lock() { ::pthread_mutex_unlock(&g_mutex); }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;
};

void child_reset() noexcept
{
    constexpr pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_mutex = fresh;
}
void before_fork() noexcept { ::pthread_mutex_lock(&g_mutex); }
void after_fork_parent() noexcept { ::pthread_mutex_unlock(&g_mutex); }

// This process's connection (a forked child makes its own; the parent's stays with the
// regions it mapped). Never destroyed: at exit, other threads may still read its regions.
constinit Connection* g_conn = nullptr;
constinit pid_t g_conn_pid = 0;
constinit bool g_conn_unusable = false;  // a request timed out or the daemon went away
constinit pid_t g_failed_pid = 0;        // connecting failed in this process: not retried
constinit char g_failure[256] = {};
constinit bool g_fork_handlers = false;

const Config& config() noexcept
{
    if (const Config* c = loaded_config()) return *c;
    Lock lock;
    if (const Config* c = loaded_config()) return *c;
    ::pthread_atfork(nullptr, nullptr, child_reset);
    return load_config();
}

// The connection for a new mapping in this process, or nullptr and why.
Connection* connection(char* why, std::size_t n) noexcept
{
    const pid_t pid = ::getpid();
    if (g_conn && g_conn_pid == pid) {
        if (!g_conn_unusable && g_conn->daemon_alive()) return g_conn;
        std::snprintf(why, n, "the connection to pagerd timed out or was lost (not retried)");
        return nullptr;
    }
    if (g_failed_pid == pid) {
        std::snprintf(why, n, "%s (not retried)", g_failure);
        return nullptr;
    }
    libclient::ConnectOptions options;
    options.timeout_ms = config().timeout_ms;
    auto made = Connection::connect(options);
    if (!made) {
        g_failed_pid = pid;
        std::snprintf(g_failure, sizeof g_failure, "%s", made.error().message.c_str());
        std::snprintf(why, n, "%s", g_failure);
        return nullptr;
    }
    g_conn = std::move(made).value().release();
    g_conn_pid = pid;
    g_conn_unusable = false;
    if (!g_fork_handlers) {
        ::pthread_atfork(before_fork, after_fork_parent, nullptr);
        g_fork_handlers = true;
    }
    return g_conn;
}

// After a failed request: is the connection still worth asking?
void note_failure(Connection* conn, const Error& e) noexcept
{
    if (e.is_errno(ETIMEDOUT) || e.is_errno(ENOTCONN) || e.is_errno(ECONNRESET) || e.is_errno(EPIPE) ||
        !conn->daemon_alive())
        g_conn_unusable = true;
}

void fd_path(int fd, char* out, std::size_t n) noexcept
{
    char link[64];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    const ssize_t len = ::readlink(link, out, n - 1);
    if (len <= 0) {
        std::snprintf(out, n, "fd %d", fd);
        return;
    }
    out[len] = '\0';
}

// The cheap checks: the reason a mapping is not for pagerd, or nullptr.
const char* refuse(const Config& c, std::size_t len, int prot, int flags, int fd, off_t off, const char* path,
                   char* why, std::size_t n) noexcept
{
    constexpr int k_harmless = MAP_NORESERVE | MAP_POPULATE | MAP_DENYWRITE | MAP_EXECUTABLE | MAP_NONBLOCK;
    const int type = flags & MAP_TYPE;
    if (c.disabled) return c.why_disabled;
    if (type != MAP_SHARED && type != MAP_PRIVATE && type != MAP_SHARED_VALIDATE) return "unknown mapping type";
    if (flags & ~(MAP_TYPE | k_harmless)) {
        std::snprintf(why, n, "unsupported flags 0x%x", static_cast<unsigned>(flags & ~(MAP_TYPE | k_harmless)));
        return why;
    }
    if (prot & PROT_EXEC) return "PROT_EXEC";
    if (prot == PROT_NONE) return "PROT_NONE";
    if (prot != PROT_READ && prot != (PROT_READ | PROT_WRITE)) return "unsupported protection";
    if (len == 0) return "length 0";
    if (off < 0 || static_cast<std::uintptr_t>(off) % k_page) return "offset not a multiple of the page size";
    struct stat st{};
    if (::fstat(fd, &st) != 0) return "fstat failed";
    if (!S_ISREG(st.st_mode)) return "not a regular file";
    // Nothing to page in, and often memory shared with other processes (shm_open, memfd),
    // whose writes a copy in the daemon's cache would not see.
    struct statfs fs{};
    if (::fstatfs(fd, &fs) == 0 &&
        (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC || fs.f_type == HUGETLBFS_MAGIC))
        return "a file in memory (tmpfs, ramfs, hugetlbfs, memfd)";
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size < c.min_size) {
        std::snprintf(why, n, "smaller than the minimum size (%llu < %llu bytes)", static_cast<unsigned long long>(size),
                      static_cast<unsigned long long>(c.min_size));
        return why;
    }
    if (!path_wanted(c, path)) return "does not match PAGERD_MAP";
    if (static_cast<std::uint64_t>(off) + len > round_up(size)) return "extends beyond the end of the file";
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & O_PATH)) return "descriptor not open for reading";
    const bool shared = type != MAP_PRIVATE;
    if ((prot & PROT_WRITE) && shared) {
        if ((fl & O_ACCMODE) != O_RDWR) return "MAP_SHARED with PROT_WRITE needs the file open O_RDWR";
        if (fl & O_DIRECT) return "descriptor open with O_DIRECT";
    } else if ((fl & O_ACCMODE) != O_RDONLY) {
        return "descriptor open for writing (its writes would not show in this mapping at once)";
    }
    return nullptr;
}

// Caller holds the mutex. The mapping through pagerd, or nullptr and why.
void* take(std::size_t len, int prot, int flags, int fd, off_t off, char* why, std::size_t n) noexcept
{
    if (!has_room()) {
        std::snprintf(why, n, "the library's table is full (%zu regions)", k_max_regions);
        return nullptr;
    }
    Connection* conn = connection(why, n);
    if (!conn) return nullptr;
    libclient::MapOptions o;
    o.offset = static_cast<std::uint64_t>(off);
    o.length = round_up(len);
    const bool shared = (flags & MAP_TYPE) != MAP_PRIVATE;
    o.access = !(prot & PROT_WRITE) ? Access::ReadOnly : shared ? Access::Shared : Access::PrivateWritable;
    // uffd-wp keeps the region in the daemon's page cache, inherited by a forked child,
    // with no SIGSEGV handler installed in the program.
    if (o.access == Access::Shared) o.tracking = libclient::Tracking::UffdWp;
    if (flags & MAP_POPULATE) o.prefetch = libclient::Prefetch::All;
    auto mapped = conn->map_fd(fd, o);
    if (!mapped) {
        note_failure(conn, mapped.error());
        std::snprintf(why, n, "%s", mapped.error().message.c_str());
        return nullptr;
    }
    TakenRegion t;
    t.conn = conn;
    t.region = mapped.value();
    t.fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    add_region(t, as_int(t.region.addr), t.region.size, o.offset);
    return t.region.addr;
}

// All that is left of region ri goes: through libclient while it is whole at its first
// address (a Shared one is flushed first), else the kernel's munmap and forget().
void release_region(std::uint32_t ri) noexcept
{
    TakenRegion& t = region(ri);
    const bool shared = t.region.access == Access::Shared;
    bool unmapped = false;
    if (t.intact) {
        auto u = t.conn->unmap(t.region);
        // A Shared region's unmap fails before its munmap; the others' only after it.
        unmapped = u.ok() || !shared;
        if (u.ok()) {
            free_region(ri);
            return;
        }
    } else if (shared) {
        (void)t.conn->flush(t.region);
    }
    if (!unmapped)
        for_each_piece(0, UINTPTR_MAX, [&](int i) {
            const Piece& p = piece(i);
            if (p.region == ri) real::munmap(as_ptr(p.start.load()), p.end.load() - p.start.load());
        });
    (void)t.conn->forget(t.region);
    free_region(ri);
}

// The regions with a piece in [a, b), each once: fn(region index).
template <class Fn>
void for_each_region(std::uintptr_t a, std::uintptr_t b, Fn fn)
{
    bool seen[k_max_regions] = {};
    for_each_piece(a, b, [&](int i) {
        const std::uint32_t ri = piece(i).region;
        if (!seen[ri]) {
            seen[ri] = true;
            fn(ri);
        }
    });
}

// [a, b) was replaced (MAP_FIXED, MREMAP_FIXED): the table lets go of it; a region with
// nothing left is forgotten. Caller holds the mutex.
void forget_range(std::uintptr_t a, std::uintptr_t b) noexcept
{
    std::uint32_t touched[k_max_regions];
    std::size_t count = 0;
    for_each_region(a, b, [&](std::uint32_t ri) { touched[count++] = ri; });
    cut(a, b);
    for (std::size_t i = 0; i < count; ++i) {
        TakenRegion& t = region(touched[i]);
        t.intact = false;
        if (has_pieces(touched[i])) continue;
        (void)t.conn->forget(t.region);
        free_region(touched[i]);
    }
}

// munmap of [a, b): what is not ours by the kernel, each region touched in whole by
// release_region, parts of regions by the kernel. Each byte is unmapped once, so that no
// other thread's new mapping in a freed hole is hit. Caller holds the mutex.
void unmap_locked(std::uintptr_t a, std::uintptr_t b) noexcept
{
    for (std::uintptr_t at = a; at < b;) {
        std::uintptr_t next = b, skip_to = 0;
        for_each_piece(at, b, [&](int i) {
            const auto s = piece(i).start.load(), e = piece(i).end.load();
            if (s <= at) skip_to = e > skip_to ? e : skip_to;
            else if (s < next) next = s;
        });
        if (skip_to) {
            at = skip_to;
            continue;
        }
        real::munmap(as_ptr(at), next - at);
        at = next;
    }
    for_each_region(a, b, [&](std::uint32_t ri) {
        bool whole = true;
        for_each_piece(0, UINTPTR_MAX, [&](int i) {
            const Piece& p = piece(i);
            if (p.region == ri && (p.start.load() < a || p.end.load() > b)) whole = false;
        });
        if (whole) {
            release_region(ri);
            return;
        }
        region(ri).intact = false;
        for_each_piece(a, b, [&](int i) {
            const Piece& p = piece(i);
            if (p.region != ri) return;
            const auto s = p.start.load() > a ? p.start.load() : a;
            const auto e = p.end.load() < b ? p.end.load() : b;
            real::munmap(as_ptr(s), e - s);
        });
    });
    cut(a, b);
}

void* fail(int err) noexcept
{
    errno = err;
    return MAP_FAILED;
}

// mremap growing a taken range (MREMAP_MAYMOVE): a new mapping of the file, through pagerd
// if it can, else the kernel's; then the old range goes. A PrivateWritable region's own
// writes cannot follow it: ENOMEM, as if there were no room. Caller holds the mutex.
void* grow(int pi, std::uintptr_t a, std::uintptr_t b, std::size_t new_size, bool fixed, void* new_addr) noexcept
{
    const Piece& p = piece(pi);
    const std::uint32_t ri = p.region;
    const std::uint64_t offset = p.offset + (a - p.start.load());
    TakenRegion& t = region(ri);
    if (t.region.access == Access::PrivateWritable || t.fd < 0 || !has_room()) return fail(ENOMEM);
    if (t.region.access == Access::Shared) (void)t.conn->flush(t.region);
    char why[256];
    void* got = MAP_FAILED;
    if (Connection* conn = connection(why, sizeof why)) {
        libclient::MapOptions o;
        o.offset = offset;
        o.length = round_up(new_size);
        o.access = t.region.access;
        if (o.access == Access::Shared) o.tracking = libclient::Tracking::UffdWp;
        o.addr = fixed ? new_addr : nullptr;
        if (auto m = conn->map_fd(t.fd, o)) {
            if (fixed) forget_range(as_int(new_addr), as_int(new_addr) + o.length);
            TakenRegion n;
            n.conn = conn;
            n.region = m.value();
            n.fd = ::fcntl(t.fd, F_DUPFD_CLOEXEC, 0);
            add_region(n, as_int(n.region.addr), n.region.size, offset);
            got = n.region.addr;
        } else {
            note_failure(conn, m.error());
        }
    }
    if (got == MAP_FAILED) {
        const bool shared = t.region.access == Access::Shared;
        got = real::mmap(new_addr, new_size, PROT_READ | (shared ? PROT_WRITE : 0),
                         (shared ? MAP_SHARED : MAP_PRIVATE) | (fixed ? MAP_FIXED : 0), t.fd, static_cast<off_t>(offset));
        if (got == MAP_FAILED) return got;
        if (fixed) forget_range(as_int(got), as_int(got) + round_up(new_size));
    }
    unmap_locked(a, b);
    return got;
}

}  // namespace

void* map(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept
{
    Inside inside;
    const Config& c = config();
    char path[PATH_MAX];
    fd_path(fd, path, sizeof path);
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
        say(path, "fell back", "MAP_FIXED");
        return map_fixed(addr, len, prot, flags, fd, off);
    }
    char why[512];
    if (const char* reason = refuse(c, len, prot, flags, fd, off, path, why, sizeof why)) {
        say(path, "fell back", reason);
        return real::mmap(addr, len, prot, flags, fd, off);
    }
    void* got = nullptr;
    {
        Lock lock;
        got = take(len, prot, flags, fd, off, why, sizeof why);
    }
    if (!got) {
        say(path, "fell back", why);
        return real::mmap(addr, len, prot, flags, fd, off);
    }
    say(path, "taken");
    return got;
}

void* map_fixed(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept
{
    Inside inside;
    void* got = real::mmap(addr, len, prot, flags, fd, off);
    if (got == MAP_FAILED || (flags & MAP_FIXED_NOREPLACE)) return got;
    const auto a = as_int(got), b = a + round_up(len);
    if (touches(a, b)) {
        Lock lock;
        forget_range(a, b);
    }
    return got;
}

int unmap(void* addr, std::size_t len) noexcept
{
    Inside inside;
    const auto a = as_int(addr);
    if (a % k_page || len == 0 || len > UINTPTR_MAX - a - k_page) return real::munmap(addr, len);
    Lock lock;
    unmap_locked(a, a + round_up(len));
    return 0;
}

void* remap(void* old, std::size_t old_size, std::size_t new_size, int flags, void* new_addr) noexcept
{
    Inside inside;
    const auto a = as_int(old);
    const bool fixed = flags & MREMAP_FIXED;
    if (a % k_page || new_size == 0 || old_size > UINTPTR_MAX - a - k_page || new_size > UINTPTR_MAX / 2)
        return real::mremap(old, old_size, new_size, flags, new_addr);
    const auto b = a + round_up(old_size), new_b = as_int(new_addr) + round_up(new_size);
    Lock lock;
    if (old_size == 0 ? touches(a, a + k_page) : false) return fail(EINVAL);  // a duplicate of ours: no
    if (old_size == 0 || !touches(a, b)) {
        void* got = real::mremap(old, old_size, new_size, flags, new_addr);
        if (got != MAP_FAILED && fixed) forget_range(as_int(got), new_b);
        return got;
    }
    const int pi = piece_holding(a, b);
    if (pi < 0 || (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED))) return fail(EINVAL);
    if (fixed && as_int(new_addr) < b && a < new_b) return fail(EINVAL);
    if (round_up(new_size) > b - a) {
        if (!(flags & MREMAP_MAYMOVE)) return fail(ENOMEM);
        return grow(pi, a, b, new_size, fixed, new_addr);
    }
    // Same size or smaller, moved or not: the kernel moves the pages and the daemon
    // follows (REMAP and UNMAP events); the table follows here.
    const std::uint32_t ri = piece(pi).region;
    const std::uint64_t offset = piece(pi).offset + (a - piece(pi).start.load());
    void* got = real::mremap(old, old_size, new_size, flags, new_addr);
    if (got == MAP_FAILED) return got;
    if (fixed) forget_range(as_int(got), new_b);
    cut(a, b);
    add_piece(ri, as_int(got), as_int(got) + round_up(new_size), offset);
    region(ri).intact = false;
    return got;
}

int advise(void* addr, std::size_t len, int advice) noexcept
{
    Inside inside;
    const auto a = as_int(addr);
    if (advice == MADV_WILLNEED && a % k_page == 0 && len && len <= UINTPTR_MAX - a - k_page) {
        struct Want {
            Connection* conn;
            std::uintptr_t start, end;
        } wants[64];
        std::size_t count = 0;
        const auto b = a + round_up(len);
        {
            Lock lock;
            for_each_piece(a, b, [&](int i) {
                const Piece& p = piece(i);
                if (count == 64) return;
                const auto s = p.start.load() > a ? p.start.load() : a;
                const auto e = p.end.load() < b ? p.end.load() : b;
                wants[count++] = {region(p.region).conn, s, e};
            });
        }
        for (std::size_t i = 0; i < count; ++i)
            if (!wants[i].conn->forked()) (void)wants[i].conn->prefetch(as_ptr(wants[i].start), wants[i].end - wants[i].start);
    }
    return real::madvise(addr, len, advice);
}

int sync(void* addr, std::size_t len, int flags) noexcept
{
    Inside inside;
    const auto a = as_int(addr);
    bool failed = false;
    if ((flags & MS_SYNC) && a % k_page == 0 && len && len <= UINTPTR_MAX - a - k_page) {
        struct Flush {
            Connection* conn;
            libclient::Region region;
        } flushes[64];
        std::size_t count = 0;
        {
            Lock lock;
            for_each_region(a, a + round_up(len), [&](std::uint32_t ri) {
                const TakenRegion& t = region(ri);
                if (count < 64 && t.region.access == Access::Shared) flushes[count++] = {t.conn, t.region};
            });
        }
        for (std::size_t i = 0; i < count; ++i)
            if (!flushes[i].conn->flush(flushes[i].region)) failed = true;
    }
    const int r = real::msync(addr, len, flags);
    if (r != 0) return r;
    if (failed) {
        errno = EIO;
        return -1;
    }
    return 0;
}

}  // namespace pagerd::preload
