// The slow paths of the interposed calls: deciding whether pagerd takes a file mapping,
// and keeping the table of taken regions right through munmap, mremap, madvise and msync.
// interpose.cpp calls these only for file mappings and for ranges that touch a taken
// region; everything here runs with the thread's reentrancy flag set, so that libclient's
// own mmap calls (and anything else reached from here) go straight to the kernel.
#pragma once
#include <sys/types.h>

#include <cstddef>

namespace pagerd::preload {

// Set while this thread is inside the library: its calls go straight to the kernel.
[[gnu::tls_model("initial-exec")]] extern thread_local bool t_inside;

struct Inside {
    Inside() noexcept : m_was(t_inside) { t_inside = true; }
    ~Inside() { t_inside = m_was; }
    Inside(const Inside&) = delete;
    Inside& operator=(const Inside&) = delete;

private:
    bool m_was;
};

void* map(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept;
// MAP_FIXED of anything over a taken region (after the real mmap put it there).
void* map_fixed(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept;
int unmap(void* addr, std::size_t len) noexcept;
void* remap(void* old, std::size_t old_size, std::size_t new_size, int flags, void* new_addr) noexcept;
int advise(void* addr, std::size_t len, int advice) noexcept;
int sync(void* addr, std::size_t len, int flags) noexcept;

// The path of a descriptor as /proc/self/fd names it ("fd N" if it cannot be read).
void fd_path(int fd, char* out, std::size_t n) noexcept;
// In a child of fork() whose connection's regions the kernel did not give it (no
// UFFD_FEATURE_EVENT_FORK: MADV_DONTFORK), before the child runs on: each taken range is
// mapped again at its address, through a connection of the child's, or by the kernel.
void remap_in_child() noexcept;

}  // namespace pagerd::preload
