// What the library took: regions (one per mapping served by pagerd) and their pieces (the
// address ranges still mapped; a region is cut into several by partial munmap and moved by
// mremap). touches() reads the pieces without a lock, so munmap, mremap, madvise and msync
// of memory that is not ours (every call of an allocator) cost a scan and no lock.
// Everything else is called with the engine's mutex held. No allocation anywhere: the
// tables are static arrays, initialized before any constructor runs.
#pragma once
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "pagerd/client.hpp"

namespace pagerd::preload {

inline constexpr std::size_t k_max_regions = 1024;  // the daemon's default per connection
inline constexpr std::size_t k_max_pieces = 4096;

struct TakenRegion {
    bool used = false;
    bool intact = true;                       // still whole at libclient's address
    libclient::Connection* conn = nullptr;    // the connection that mapped it (never destroyed)
    libclient::Region region;                 // as libclient knows it (its first address)
    int fd = -1;                              // our copy of the file's descriptor (O_CLOEXEC)
    int prot = PROT_READ;                     // the program's mmap: its protection and type
    int type = MAP_PRIVATE;                   // (MAP_PRIVATE or MAP_SHARED), for the kernel's
                                              // mapping of it in a forked child (fork.cpp)
};

// One mapped range of a region, at `offset` bytes into its file.
struct Piece {
    std::atomic<std::uintptr_t> start{0};
    std::atomic<std::uintptr_t> end{0};  // 0: a free slot
    std::uint32_t region = 0;
    std::uint64_t offset = 0;
};

// Lock-free: does [a, b) overlap a piece?
bool touches(std::uintptr_t a, std::uintptr_t b) noexcept;

// With the mutex held:
bool has_room() noexcept;  // a region slot and two piece slots free
TakenRegion& region(std::uint32_t index) noexcept;
// A new region with one piece [addr, addr + len) at `offset`; its index.
std::uint32_t add_region(const TakenRegion& r, std::uintptr_t addr, std::size_t len, std::uint64_t offset) noexcept;
bool add_piece(std::uint32_t region, std::uintptr_t start, std::uintptr_t end, std::uint64_t offset) noexcept;
// Removes [a, b) from every piece (splitting one that spans it). Does not touch memory.
void cut(std::uintptr_t a, std::uintptr_t b) noexcept;
// The piece that holds all of [a, b), if any (-1 otherwise).
int piece_holding(std::uintptr_t a, std::uintptr_t b) noexcept;
Piece& piece(int index) noexcept;
bool has_pieces(std::uint32_t region) noexcept;
// Calls fn(piece index) for every piece that overlaps [a, b), in slot order.
template <class Fn>
void for_each_piece(std::uintptr_t a, std::uintptr_t b, Fn fn);
void free_region(std::uint32_t region) noexcept;  // closes its descriptor
// A new region (a free slot: -1 if none) that piece `piece_index` now belongs to.
int adopt_piece(const TakenRegion& r, int piece_index) noexcept;
// Drops one piece from the table (not its memory), and its region if none is left.
void drop_piece_at(int piece_index) noexcept;
// In a child of fork(), before it runs on: drops the pieces whose memory the child did not
// get (libclient's regions with memory of their own are MADV_DONTFORK, and libclient's
// own record of them is gone in the child), and the regions left with none.
void drop_absent() noexcept;

namespace detail {
extern Piece g_pieces[k_max_pieces];
extern std::atomic<std::size_t> g_piece_top;  // slots [0, top) may be in use
}  // namespace detail

template <class Fn>
void for_each_piece(std::uintptr_t a, std::uintptr_t b, Fn fn)
{
    const std::size_t top = detail::g_piece_top.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < top; ++i) {
        const Piece& p = detail::g_pieces[i];
        const auto e = p.end.load(std::memory_order_acquire);
        if (e && p.start.load(std::memory_order_relaxed) < b && a < e) fn(static_cast<int>(i));
    }
}

}  // namespace pagerd::preload
