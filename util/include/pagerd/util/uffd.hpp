// userfaultfd constants newer than the build host's kernel headers (Debian 12 ships 6.1's),
// defined here so that features are compiled in and then probed at run time.
#pragma once
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <cerrno>
#include <cstdint>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP  // 6.4+: the page is mapped write-protected
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
    struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
    __u64 mode;
    __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

namespace pagerd::util {

// Install a poison marker on [start, start+len): the next access raises SIGBUS.
// Returns 0 or an errno value.
inline int uffd_poison(int uffd, std::uint64_t start, std::uint64_t len)
{
    uffdio_poison p{};
    p.range.start = start;
    p.range.len = len;
    return ::ioctl(uffd, UFFDIO_POISON, &p) == 0 ? 0 : errno;
}

// Poison markers (DONTWAKE) on every page of [start, end) that has nothing mapped, so that
// touching one raises SIGBUS instead of waiting for a server or reading what the memory
// behind it holds; mapped pages stay. A range the kernel refuses whole (ENOENT: it spans
// more than one mapping, after an mprotect of part of it, say) goes in 2 MiB pieces, and
// a piece refused whole page by page. Returns 0, or the errno value that stopped it
// (ESRCH: the address space is gone; EAGAIN: an event of the userfaultfd's must be read
// first).
inline int uffd_poison_holes(int uffd, std::uint64_t start, std::uint64_t end, std::uint64_t page)
{
    std::uint64_t piece = end - start;
    for (std::uint64_t a = start; a < end;) {
        uffdio_poison p{};
        p.range.start = a;
        p.range.len = end - a < piece ? end - a : piece;
        p.mode = UFFDIO_POISON_MODE_DONTWAKE;
        if (::ioctl(uffd, UFFDIO_POISON, &p) == 0) {
            a += p.range.len;
            if (piece < (2u << 20)) piece = 2u << 20;  // past the boundary: pieces again
            continue;
        }
        const int err = errno;
        if (err == EAGAIN && p.updated <= 0)
            return EAGAIN;  // an event not read yet (munmap, mremap, fork ...) holds it up
        if (err == EAGAIN)
            a += static_cast<std::uint64_t>(p.updated);  // stopped at a mapped page
        else if (err == EEXIST || err == EAGAIN)
            a += page;  // a mapped page (or the layout changing under us): past it
        else if (err == ENOENT && p.range.len > page)
            piece = p.range.len > (2u << 20) ? (2u << 20) : page;
        else if (err == ENOENT)
            a += page;  // a page in no registered mapping: nothing to poison
        else
            return err;
    }
    return 0;
}

// Wake threads blocked on faults in [start, start+len). Returns 0 or an errno value.
inline int uffd_wake(int uffd, std::uint64_t start, std::uint64_t len)
{
    uffdio_range r{start, len};
    return ::ioctl(uffd, UFFDIO_WAKE, &r) == 0 ? 0 : errno;
}

// Whether the address space behind a userfaultfd is gone (its process exited or exec'd):
// its ioctls then fail with ESRCH. Probes with UFFDIO_CONTINUE of the page at `probe`,
// which must be in none of the userfaultfd's ranges: then it changes nothing (ENOENT).
inline bool uffd_gone(int uffd, std::uint64_t probe = 0x10000, std::uint64_t page = 4096)
{
    uffdio_continue c{};
    c.range.start = probe;
    c.range.len = page;
    c.mode = UFFDIO_CONTINUE_MODE_DONTWAKE;
    return ::ioctl(uffd, UFFDIO_CONTINUE, &c) != 0 && errno == ESRCH;
}

}  // namespace pagerd::util
