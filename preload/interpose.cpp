// The six exported functions. Each decides in a few instructions whether the call is one
// for the library (a file mapping; a range that touches a taken region) and otherwise
// goes straight to the kernel: anonymous mappings, every call made from inside the
// library or libclient (t_inside), and every munmap/mremap/madvise/msync of memory that
// is not ours take no lock, allocate nothing and read no environment.
#include <sys/mman.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>

#include "engine.hpp"
#include "real.hpp"
#include "table.hpp"

using namespace pagerd::preload;

namespace {

// [addr, addr + len) touches a taken region (len rounded up to a page; no overflow).
bool ours(const void* addr, std::size_t len) noexcept
{
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    if (len > UINTPTR_MAX - a - 4096) return false;
    return touches(a, a + ((len + 4095) & ~std::uintptr_t{4095}));
}

}  // namespace

extern "C" {

[[gnu::visibility("default")]] void* mmap(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept
{
    if (t_inside) return real::mmap(addr, len, prot, flags, fd, off);
    if ((flags & MAP_ANONYMOUS) || fd < 0) {
        // Anonymous memory put over a taken region (MAP_FIXED): the table lets go of it.
        if (!(flags & MAP_FIXED) || !ours(addr, len)) return real::mmap(addr, len, prot, flags, fd, off);
    }
    const int saved = errno;  // what the library does on the way does not show on success
    void* got = fd < 0 || (flags & MAP_ANONYMOUS) ? map_fixed(addr, len, prot, flags, fd, off)
                                                   : map(addr, len, prot, flags, fd, off);
    if (got != MAP_FAILED) errno = saved;
    return got;
}

[[gnu::visibility("default")]] void* mmap64(void* addr, std::size_t len, int prot, int flags, int fd, off64_t off) noexcept
{
    return mmap(addr, len, prot, flags, fd, off);
}

[[gnu::visibility("default")]] int munmap(void* addr, std::size_t len) noexcept
{
    if (t_inside || !ours(addr, len)) return real::munmap(addr, len);
    const int saved = errno;
    const int r = unmap(addr, len);
    if (r == 0) errno = saved;
    return r;
}

[[gnu::visibility("default")]] void* mremap(void* old, std::size_t old_size, std::size_t new_size, int flags, ...) noexcept
{
    void* new_addr = nullptr;
    if (flags & MREMAP_FIXED) {
        va_list args;
        va_start(args, flags);
        new_addr = va_arg(args, void*);
        va_end(args);
    }
    if (t_inside || (!ours(old, old_size ? old_size : 1) && !((flags & MREMAP_FIXED) && ours(new_addr, new_size))))
        return real::mremap(old, old_size, new_size, flags, new_addr);
    const int saved = errno;
    void* got = remap(old, old_size, new_size, flags, new_addr);
    if (got != MAP_FAILED) errno = saved;
    return got;
}

[[gnu::visibility("default")]] int madvise(void* addr, std::size_t len, int advice) noexcept
{
    if (t_inside || advice != MADV_WILLNEED || !ours(addr, len)) return real::madvise(addr, len, advice);
    const int saved = errno;
    const int r = advise(addr, len, advice);
    if (r == 0) errno = saved;
    return r;
}

[[gnu::visibility("default")]] int msync(void* addr, std::size_t len, int flags) noexcept
{
    if (t_inside || !(flags & MS_SYNC) || !ours(addr, len)) return real::msync(addr, len, flags);
    const int saved = errno;
    const int r = sync(addr, len, flags);
    if (r == 0) errno = saved;
    return r;
}

}  // extern "C"
