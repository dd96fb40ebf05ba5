// The UMap-compatible C API (include/umap/umap.h, docs/umap.md) over the C++ API.
// One implicit Connection per process, made on first use; no exception crosses the C API.
#include "umap/umap.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>

#include "fork.hpp"
#include "pagerd/client.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::libclient;

namespace {

// ---- errors ------------------------------------------------------------------------------

thread_local std::string t_error;

void* fail_ptr(int err, const std::string& message)
{
    t_error = message;
    errno = err;
    return UMAP_FAILED;
}

int fail_int(int err, const std::string& message)
{
    t_error = message;
    errno = err;
    return -1;
}

// Errors from the C++ API become errno by the one table both C APIs share (to_errno in
// client.hpp, docs/umap.md#errno); Error::domain says which numbering a code is in.

// A failed connect: "no daemon there" or "that daemon will not have us" becomes
// ECONNREFUSED; reasons the caller can act on otherwise (permissions, resources, no
// userfaultfd) stay as they are.
int connect_errno(const Error& e)
{
    if (e.domain == ErrorDomain::Daemon)  // the daemon refused us: its client limit, or anything else
        return e.is_daemon(proto::ErrorCode::LIMIT) ? ENOMEM : ECONNREFUSED;
    if (e.domain != ErrorDomain::System) return ECONNREFUSED;  // not a pagerd that we understand
    switch (e.code) {
    case EACCES:
    case EPERM:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case ENOSYS:
    case ETIMEDOUT:
    case ECONNRESET: return e.code;
    default: return ECONNREFUSED;
    }
}

// ---- the implicit connection -------------------------------------------------------------

// Never destroyed: regions may still be in use by other threads while static destructors
// run, and the daemon (and the kernel) clean up after a process that exits.
struct State {
    std::mutex mutex;
    Connection* conn = nullptr;  // leaked on purpose, see above
};

State& state()
{
    static State* s = new State;
    return *s;
}

// fork(): the child must not use the parent's connection (its socket is shared with the
// parent, its monitor thread does not exist in the child and its regions are not mapped
// there, MADV_DONTFORK). The child abandons it and connects anew when it needs to.
void atfork_prepare() { state().mutex.lock(); }
void atfork_parent() { state().mutex.unlock(); }
void atfork_child()
{
    state().conn = nullptr;
    state().mutex.unlock();
}

// At a normal exit, the dirty pages of regions never uunmap()ed reach their files, as
// those of MAP_SHARED memory do.
void flush_at_exit()
{
    try {
        Connection* c = nullptr;
        {
            std::lock_guard lock(state().mutex);
            c = state().conn;
        }
        if (c) (void)c->flush_all();
    } catch (...) {
    }
}

std::once_flag g_hooks_once;

// The connection, made now if `create` and there is none. Returns nullptr with errno and
// t_error set when it cannot be made; a later call tries again.
Connection* connection(bool create)
{
    auto& s = state();
    std::lock_guard lock(s.mutex);
    if (s.conn || !create) return s.conn;
    std::call_once(g_hooks_once, [] {
        register_fork_handlers();  // first: see connection_impl.hpp
        ::pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
        std::atexit(flush_at_exit);
    });
    ConnectOptions o;  // socket: $PAGERD_SOCKET, else the default
    auto r = Connection::connect(o);
    if (!r) {
        fail_int(connect_errno(r.error()), "umap: " + r.error().message);
        return nullptr;
    }
    s.conn = r.value().release();
    return s.conn;
}

// ---- configuration -----------------------------------------------------------------------

// As UMap reads its variables: a decimal number; unset, zero or not a number means the
// default.
bool env_u64(const char* name, std::uint64_t& out)
{
    const char* v = std::getenv(name);
    if (!v) return false;
    while (*v == ' ' || *v == '\t') ++v;
    if (*v < '0' || *v > '9') return false;
    errno = 0;
    char* end = nullptr;
    const unsigned long long x = std::strtoull(v, &end, 10);
    if (errno == ERANGE || x == 0) return false;
    out = x;
    return true;
}

struct Config {
    long system_page_size = 4096;
    std::uint64_t umap_page_size = 4096;
    std::uint64_t max_pages_in_buffer = 0;
    std::uint64_t num_fillers = 0;
    std::uint64_t num_evictors = 0;
    std::uint64_t read_ahead = 0;
    std::uint64_t max_fault_events = 256;
    int evict_low_water = 70;
    int evict_high_water = 90;
};

Config load_config()
{
    Config c;
    const long sys_page = ::sysconf(_SC_PAGESIZE);
    if (sys_page > 0) c.system_page_size = sys_page;
    const auto page = static_cast<std::uint64_t>(c.system_page_size);
    c.umap_page_size = page;
    std::uint64_t v = 0;
    if (env_u64("UMAP_PAGESIZE", v) && v % page == 0) c.umap_page_size = v;

    if (env_u64("UMAP_BUFSIZE", v)) {
        c.max_pages_in_buffer = v;
    } else {  // 80% of the machine's memory, in UMap pages
        const long phys = ::sysconf(_SC_PHYS_PAGES);
        const std::uint64_t bytes = phys > 0 ? static_cast<std::uint64_t>(phys) * page : 0;
        c.max_pages_in_buffer = bytes / c.umap_page_size * 80 / 100;
    }

    unsigned threads = std::thread::hardware_concurrency();
    if (threads == 0) threads = 16;  // UMap's fallback
    c.num_fillers = env_u64("UMAP_PAGE_FILLERS", v) ? v : threads;
    c.num_evictors = env_u64("UMAP_PAGE_EVICTORS", v) ? v : threads;
    c.read_ahead = env_u64("UMAP_READ_AHEAD", v) ? v : 0;
    c.max_fault_events = env_u64("UMAP_MAX_FAULT_EVENTS", v) ? v : 256;
    if (env_u64("UMAP_EVICT_LOW_WATER_THRESHOLD", v) && v <= 100) c.evict_low_water = static_cast<int>(v);
    if (env_u64("UMAP_EVICT_HIGH_WATER_THRESHOLD", v) && v <= 100) c.evict_high_water = static_cast<int>(v);
    return c;
}

const Config& config()
{
    static const Config c = load_config();
    return c;
}

struct Descriptor {
    int fd;
    explicit Descriptor(int d) : fd(d) {}
    Descriptor(const Descriptor&) = delete;
    Descriptor& operator=(const Descriptor&) = delete;
    ~Descriptor()
    {
        if (fd >= 0) ::close(fd);
    }
};

// The same file as fd, opened again without O_DIRECT; -1 if that cannot be done (then fd
// itself is used).
int reopen_buffered(int fd, int access_mode)
{
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const int d = ::open(path.c_str(), access_mode | O_CLOEXEC);
    if (d < 0) return -1;
    struct stat a{}, b{};
    if (::fstat(fd, &a) == 0 && ::fstat(d, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) return d;
    ::close(d);
    return -1;
}

template <class T, class F>
T guarded(T failed, F&& f)
{
    const int saved = errno;
    try {
        T r = f();
        if (r != failed) errno = saved;  // success leaves errno as it was
        return r;
    } catch (const std::bad_alloc&) {
        t_error = "umap: out of memory";
        errno = ENOMEM;
    } catch (const std::exception& e) {
        t_error = std::string("umap: ") + e.what();
        errno = EIO;
    } catch (...) {
        t_error = "umap: unexpected failure";
        errno = EIO;
    }
    return failed;
}

}  // namespace

extern "C" {

void* umap(void* addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    return guarded(UMAP_FAILED, [&]() -> void* {
        const bool writable = prot == (PROT_READ | PROT_WRITE);
        if (prot != PROT_READ && !writable)
            return fail_ptr(EINVAL, "umap: prot must be PROT_READ or PROT_READ | PROT_WRITE");
        if (!(flags & UMAP_PRIVATE) || (flags & ~(UMAP_PRIVATE | UMAP_FIXED)))
            return fail_ptr(EINVAL, "umap: flags must be UMAP_PRIVATE, optionally with UMAP_FIXED");
        const auto page = static_cast<std::uint64_t>(config().system_page_size);
        if (length == 0) return fail_ptr(EINVAL, "umap: length is zero");
        if (length > SIZE_MAX - (page - 1)) return fail_ptr(ENOMEM, "umap: length is too large");
        const std::uint64_t rounded = (static_cast<std::uint64_t>(length) + page - 1) / page * page;
        if (offset < 0 || static_cast<std::uint64_t>(offset) % page)
            return fail_ptr(EINVAL, "umap: offset must be a non-negative multiple of the page size (" +
                                        std::to_string(page) + ")");
        const bool fixed = flags & UMAP_FIXED;
        if (fixed && (!addr || reinterpret_cast<std::uintptr_t>(addr) % page))
            return fail_ptr(EINVAL, "umap: UMAP_FIXED needs a page-aligned, non-null addr");

        // fd -1: anonymous memory, the daemon's zero store (demand-zero pages in its cache;
        // a writable region's written pages are this process's own, as MAP_ANONYMOUS).
        if (fd == -1) {
            if (offset != 0) return fail_ptr(EINVAL, "umap: anonymous memory (fd -1) takes offset 0");
            Connection* c = connection(true);
            if (!c) return UMAP_FAILED;
            MapOptions o;
            o.length = rounded;
            o.access = writable ? Access::PrivateWritable : Access::ReadOnly;
            o.addr = fixed ? addr : nullptr;
            auto r = c->map_store("zero:" + std::to_string(rounded), o);
            if (!r) return fail_ptr(to_errno(r.error()), "umap: " + r.error().message);
            return r->addr;
        }
        // As mmap(2): the descriptor must be readable, and writable too for a writable region.
        const int fl = ::fcntl(fd, F_GETFL);
        if (fl < 0) return fail_ptr(EBADF, "umap: fd " + std::to_string(fd) + " is not an open descriptor");
        const int acc = fl & O_ACCMODE;
        if (acc == O_WRONLY) return fail_ptr(EACCES, "umap: fd is open for writing only");
        if (writable && acc != O_RDWR)
            return fail_ptr(EACCES, "umap: PROT_WRITE needs a descriptor open for reading and writing (O_RDWR)");

        Connection* c = connection(true);
        if (!c) return UMAP_FAILED;
        // UMap programs often open their files O_DIRECT. The daemon reads and writes whole
        // fault blocks, and a file's partial last page, through the descriptor it is given:
        // give it a buffered one of the same file.
        const Descriptor buffered(fl & O_DIRECT ? reopen_buffered(fd, acc) : -1);
        MapOptions o;
        o.offset = static_cast<std::uint64_t>(offset);
        o.length = rounded;
        o.access = writable ? Access::Shared : Access::ReadOnly;
        o.tracking = Tracking::Auto;
        o.addr = fixed ? addr : nullptr;
        auto r = c->map_fd(buffered.fd >= 0 ? buffered.fd : fd, o);
        if (!r) return fail_ptr(to_errno(r.error()), "umap: " + r.error().message);
        return r->addr;
    });
}

int uunmap(void* addr, size_t length)
{
    (void)length;  // as in UMap: the region is known by its address
    return guarded(-1, [&] {
        Connection* c = connection(false);
        auto r = c ? c->find(addr) : Result<Region>(Error::system(EINVAL, "no region"));
        if (!r || r->addr != addr) return fail_int(EINVAL, "uunmap: no region made by umap() starts at this address");
        auto u = c->unmap(r.value());  // writes the dirty pages of a writable region first
        if (!u) return fail_int(to_errno(u.error()), "uunmap: " + u.error().message);
        return 0;
    });
}

int umap_flush(void)
{
    return guarded(-1, [&] {
        Connection* c = connection(false);
        if (!c) return 0;  // nothing was ever mapped: nothing to write
        auto f = c->flush_all();
        if (!f) return fail_int(to_errno(f.error()), "umap_flush: " + f.error().message);
        return 0;
    });
}

int umap_has_write_support(void) { return 1; }

void umap_prefetch(int npages, struct umap_prefetch_item* page_array)
{
    (void)guarded(-1, [&] {
        if (npages <= 0) return 0;
        if (!page_array) return fail_int(EINVAL, "umap_prefetch: page_array is NULL");
        Connection* c = connection(false);
        const auto page = static_cast<std::uintptr_t>(config().system_page_size);
        int bad = 0;
        std::optional<Error> failed;  // the first prefetch the daemon did not take

        // The pages of one run [start, end), all in the region `id`: asked for in one
        // PREFETCH, answered once queued (the daemon loads them in the background).
        std::uintptr_t start = 0, end = 0;
        std::uint64_t id = 0;
        const auto flush_run = [&] {
            if (start == end) return;
            const auto length = static_cast<std::size_t>(end - start);
            auto r = c->prefetch(reinterpret_cast<const void*>(start), length, /*wait=*/false);
            const bool no_prefetch = !r && r.error().is_errno(ENOTSUP);
            const bool queue_full = !r && r.error().is_daemon(proto::ErrorCode::LIMIT);
            if (no_prefetch || queue_full) {
                // A daemon without PREFETCH, or one whose queue for this connection is full:
                // the first touch of each page loads it (and its fault block) now.
                for (std::uintptr_t p = start; p < end; p += page)
                    (void)*reinterpret_cast<const volatile unsigned char*>(p);
            } else if (!r && !failed) {
                failed = r.error();
            }
            start = end = 0;
        };

        for (int i = 0; i < npages; ++i) {
            const auto* p = static_cast<const unsigned char*>(page_array[i].page_base_addr);
            auto region = c && p ? c->find(p) : Result<Region>(Error::system(EINVAL, "no region"));
            if (!region) {
                ++bad;
                continue;
            }
            const auto at = reinterpret_cast<std::uintptr_t>(p) / page * page;
            if (start != end && region->id == id && at >= start && at <= end) {
                if (at == end) end += page;  // the next page of the run (a page in it: nothing to add)
                continue;
            }
            flush_run();
            start = at;
            end = at + page;
            id = region->id;
        }
        flush_run();
        if (bad)
            return fail_int(EINVAL, "umap_prefetch: " + std::to_string(bad) +
                                        " address(es) outside every region made by umap()");
        if (failed) return fail_int(to_errno(*failed), "umap_prefetch: " + failed->message);
        return 0;
    });
}

long umapcfg_get_system_page_size(void) { return config().system_page_size; }
uint64_t umapcfg_get_umap_page_size(void) { return config().umap_page_size; }
uint64_t umapcfg_get_max_pages_in_buffer(void) { return config().max_pages_in_buffer; }
uint64_t umapcfg_get_num_fillers(void) { return config().num_fillers; }
uint64_t umapcfg_get_num_evictors(void) { return config().num_evictors; }
uint64_t umapcfg_get_read_ahead(void) { return config().read_ahead; }
uint64_t umapcfg_get_max_fault_events(void) { return config().max_fault_events; }
int umapcfg_get_evict_low_water_threshold(void) { return config().evict_low_water; }
int umapcfg_get_evict_high_water_threshold(void) { return config().evict_high_water; }

const char* pagerd_umap_last_error(void) { return t_error.c_str(); }

}  // extern "C"
