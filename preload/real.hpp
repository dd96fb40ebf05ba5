// The kernel's own calls, by raw system call: no dlsym (it can allocate, and mmap runs
// before main and inside malloc), no PLT (that would come back here). Each returns what
// the kernel returned, with errno set as glibc's wrappers would (syscall(2) does it).
#pragma once
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstddef>

namespace pagerd::preload::real {

static_assert(sizeof(long) == 8 && sizeof(off_t) == 8, "64-bit Linux only (SYS_mmap takes the byte offset)");

inline void* mmap(void* addr, std::size_t len, int prot, int flags, int fd, off_t off)
{
    return reinterpret_cast<void*>(::syscall(SYS_mmap, addr, len, prot, flags, fd, off));
}
inline int munmap(void* addr, std::size_t len) { return static_cast<int>(::syscall(SYS_munmap, addr, len)); }
inline void* mremap(void* old, std::size_t old_size, std::size_t new_size, int flags, void* new_addr)
{
    return reinterpret_cast<void*>(::syscall(SYS_mremap, old, old_size, new_size, flags, new_addr));
}
inline int madvise(void* addr, std::size_t len, int advice)
{
    return static_cast<int>(::syscall(SYS_madvise, addr, len, advice));
}
inline int msync(void* addr, std::size_t len, int flags)
{
    return static_cast<int>(::syscall(SYS_msync, addr, len, flags));
}

}  // namespace pagerd::preload::real
