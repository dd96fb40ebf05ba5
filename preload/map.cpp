// mmap of a file: the cheap checks, then pagerd's region or the kernel's mapping.
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>

#include "engine.hpp"
#include "process.hpp"
#include "real.hpp"
#include "table.hpp"

namespace pagerd::preload {
namespace {

using libclient::Access;
using libclient::Connection;

}  // namespace

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

namespace {

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
    // Without the kernel's fork events a forked child gets the regions back only by mapping
    // the file again (fork.cpp), which would lose a private mapping's writes made before.
    if (o.access == Access::PrivateWritable && !conn->fork_inherits()) {
        std::snprintf(why, n, "MAP_PRIVATE with PROT_WRITE, and a forked child would not keep its writes "
                              "(pagerd's fork support needs CAP_SYS_PTRACE)");
        return nullptr;
    }
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
    t.prot = prot;
    t.type = shared ? MAP_SHARED : MAP_PRIVATE;
    add_region(t, as_int(t.region.addr), t.region.size, o.offset);
    return t.region.addr;
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

}  // namespace pagerd::preload
