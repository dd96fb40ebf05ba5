// Calls on ranges that touch taken regions: munmap, mremap, madvise, msync, and MAP_FIXED
// over them. The table (table.hpp) follows what the kernel does to the ranges; libclient
// is told when a region goes as a whole (unmap) or when nothing is left of it (forget).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "engine.hpp"
#include "process.hpp"
#include "real.hpp"
#include "table.hpp"

namespace pagerd::preload {
namespace {

using libclient::Access;
using libclient::Connection;

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
            n.prot = t.prot;
            n.type = t.type;
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
