#include "table.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace pagerd::preload {

namespace detail {
constinit Piece g_pieces[k_max_pieces];
constinit std::atomic<std::size_t> g_piece_top{0};
}  // namespace detail

namespace {

using detail::g_piece_top;
using detail::g_pieces;

constinit TakenRegion g_regions[k_max_regions];
constinit std::atomic<std::size_t> g_live_pieces{0};  // 0: touches() returns at once

int free_piece() noexcept
{
    for (std::size_t i = 0; i < k_max_pieces; ++i)
        if (g_pieces[i].end.load(std::memory_order_relaxed) == 0) return static_cast<int>(i);
    return -1;
}

void drop_piece(Piece& p) noexcept
{
    p.end.store(0, std::memory_order_release);
    g_live_pieces.fetch_sub(1, std::memory_order_release);
}

}  // namespace

bool touches(std::uintptr_t a, std::uintptr_t b) noexcept
{
    if (g_live_pieces.load(std::memory_order_acquire) == 0) return false;
    bool hit = false;
    for_each_piece(a, b, [&](int) { hit = true; });
    return hit;
}

bool has_room() noexcept
{
    std::size_t free_pieces = 0;
    for (const Piece& p : g_pieces)
        if (p.end.load(std::memory_order_relaxed) == 0 && ++free_pieces >= 2) break;
    if (free_pieces < 2) return false;
    for (const TakenRegion& r : g_regions)
        if (!r.used) return true;
    return false;
}

TakenRegion& region(std::uint32_t index) noexcept { return g_regions[index]; }
Piece& piece(int index) noexcept { return g_pieces[index]; }

bool add_piece(std::uint32_t region_index, std::uintptr_t start, std::uintptr_t end, std::uint64_t offset) noexcept
{
    const int i = free_piece();
    if (i < 0) return false;
    Piece& p = g_pieces[i];
    p.region = region_index;
    p.offset = offset;
    p.start.store(start, std::memory_order_relaxed);
    p.end.store(end, std::memory_order_release);
    g_live_pieces.fetch_add(1, std::memory_order_release);
    const auto top = static_cast<std::size_t>(i) + 1;
    if (g_piece_top.load(std::memory_order_relaxed) < top) g_piece_top.store(top, std::memory_order_release);
    return true;
}

std::uint32_t add_region(const TakenRegion& r, std::uintptr_t addr, std::size_t len, std::uint64_t offset) noexcept
{
    std::uint32_t i = 0;
    while (g_regions[i].used) ++i;  // has_room() said there is one
    g_regions[i] = r;
    g_regions[i].used = true;
    add_piece(i, addr, addr + len, offset);
    return i;
}

void cut(std::uintptr_t a, std::uintptr_t b) noexcept
{
    for_each_piece(a, b, [&](int i) {
        Piece& p = g_pieces[i];
        const auto s = p.start.load(std::memory_order_relaxed);
        const auto e = p.end.load(std::memory_order_relaxed);
        const bool left = s < a, right = b < e;
        if (left && right) {
            // Two pieces: the right one is new (has_room() kept a slot for it).
            add_piece(p.region, b, e, p.offset + (b - s));
            p.end.store(a, std::memory_order_release);
        } else if (left) {
            p.end.store(a, std::memory_order_release);
        } else if (right) {
            p.offset += b - s;
            p.start.store(b, std::memory_order_release);
        } else {
            drop_piece(p);
        }
    });
}

int piece_holding(std::uintptr_t a, std::uintptr_t b) noexcept
{
    int found = -1;
    for_each_piece(a, b, [&](int i) {
        const Piece& p = g_pieces[i];
        if (p.start.load(std::memory_order_relaxed) <= a && b <= p.end.load(std::memory_order_relaxed)) found = i;
    });
    return found;
}

bool has_pieces(std::uint32_t region_index) noexcept
{
    const std::size_t top = g_piece_top.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < top; ++i)
        if (g_pieces[i].end.load(std::memory_order_relaxed) && g_pieces[i].region == region_index) return true;
    return false;
}

void drop_absent() noexcept
{
    const std::size_t top = g_piece_top.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < top; ++i) {
        Piece& p = g_pieces[i];
        const auto start = p.start.load(std::memory_order_relaxed);
        unsigned char resident = 0;
        if (!p.end.load(std::memory_order_relaxed) ||
            ::mincore(reinterpret_cast<void*>(start), 1, &resident) == 0 || errno != ENOMEM)
            continue;
        const std::uint32_t r = p.region;
        drop_piece(p);
        if (!has_pieces(r)) free_region(r);
    }
}

int adopt_piece(const TakenRegion& r, int piece_index) noexcept
{
    for (std::uint32_t i = 0; i < k_max_regions; ++i) {
        if (g_regions[i].used) continue;
        g_regions[i] = r;
        g_regions[i].used = true;
        g_pieces[piece_index].region = i;
        return static_cast<int>(i);
    }
    return -1;
}

void drop_piece_at(int piece_index) noexcept
{
    Piece& p = g_pieces[piece_index];
    const std::uint32_t r = p.region;
    drop_piece(p);
    if (!has_pieces(r)) free_region(r);
}

void free_region(std::uint32_t region_index) noexcept
{
    TakenRegion& r = g_regions[region_index];
    if (r.fd >= 0) ::close(r.fd);
    r = TakenRegion{};
}

}  // namespace pagerd::preload
