// The dirty set of a Shared region: two bitmaps in memory shared by client and daemon
// (the tail of the region's memfd), one bit per page.
//   dirty     pages written since they were last collected
//   flushing  pages collected by a flush (or at death) and not yet on disk
// A flush moves dirty bits to flushing, write-protects those pages, writes them, then
// clears their flushing bits; a write after the protection sets the dirty bit again.
// Every operation is lock-free and async-signal-safe (the SIGSEGV handler marks pages).
#pragma once
#include <atomic>
#include <bit>
#include <cstdint>

namespace pagerd::util {

class DirtyBitmap {
public:
    DirtyBitmap() = default;
    DirtyBitmap(void* base, std::uint64_t pages)
        : m_dirty(static_cast<std::uint64_t*>(base)), m_flushing(m_dirty + words(pages)), m_pages(pages)
    {
    }
    static std::uint64_t words(std::uint64_t pages) { return (pages + 63) / 64; }
    static std::uint64_t bytes(std::uint64_t pages) { return 2 * words(pages) * 8; }
    std::uint64_t pages() const { return m_pages; }
    explicit operator bool() const { return m_dirty != nullptr; }

    void mark(std::uint64_t page) { ref(m_dirty, page / 64).fetch_or(bit(page), std::memory_order_release); }
    void mark_range(std::uint64_t first, std::uint64_t count)
    {
        for_words(first, count, [&](std::uint64_t w, std::uint64_t mask) {
            ref(m_dirty, w).fetch_or(mask, std::memory_order_release);
        });
    }
    bool is_dirty(std::uint64_t page) const
    {
        return ref(m_dirty, page / 64).load(std::memory_order_acquire) & bit(page);
    }
    bool is_flushing(std::uint64_t page) const
    {
        return ref(m_flushing, page / 64).load(std::memory_order_acquire) & bit(page);
    }

    // Moves the dirty bits of [first, first+count) to flushing; calls run(page, n) for
    // each run of pages moved. Returns the pages moved.
    template <class Run>
    std::uint64_t collect(std::uint64_t first, std::uint64_t count, Run&& run)
    {
        std::uint64_t moved = 0;
        for_words(first, count, [&](std::uint64_t w, std::uint64_t mask) {
            const std::uint64_t got = ref(m_dirty, w).fetch_and(~mask, std::memory_order_acq_rel) & mask;
            if (!got) return;
            ref(m_flushing, w).fetch_or(got, std::memory_order_release);
            moved += static_cast<std::uint64_t>(std::popcount(got));
            runs_of(w, got, run);
        });
        return moved;
    }
    // Marks pages collected by someone else (the async strategy's PAGEMAP_SCAN).
    void add_flushing(std::uint64_t first, std::uint64_t count)
    {
        for_words(first, count, [&](std::uint64_t w, std::uint64_t mask) {
            ref(m_flushing, w).fetch_or(mask, std::memory_order_release);
        });
    }
    // Puts flushing bits back to dirty (a protection failed: the pages stay tracked).
    void restore_dirty(std::uint64_t first, std::uint64_t count) { mark_range(first, count); }
    void clear_flushing(std::uint64_t first, std::uint64_t count)
    {
        for_words(first, count, [&](std::uint64_t w, std::uint64_t mask) {
            ref(m_flushing, w).fetch_and(~mask, std::memory_order_release);
        });
    }
    // Runs of pages whose flushing bit (or, with with_dirty, either bit) is set.
    template <class Run>
    void for_each_pending(std::uint64_t first, std::uint64_t count, bool with_dirty, Run&& run) const
    {
        for_words(first, count, [&](std::uint64_t w, std::uint64_t mask) {
            std::uint64_t bits = ref(m_flushing, w).load(std::memory_order_acquire);
            if (with_dirty) bits |= ref(m_dirty, w).load(std::memory_order_acquire);
            if (bits & mask) runs_of(w, bits & mask, run);
        });
    }
    std::uint64_t count_dirty(std::uint64_t first, std::uint64_t count) const
    {
        std::uint64_t n = 0;
        for_words(first, count, [&](std::uint64_t w, std::uint64_t mask) {
            n += static_cast<std::uint64_t>(std::popcount(ref(m_dirty, w).load(std::memory_order_relaxed) & mask));
        });
        return n;
    }

private:
    static std::uint64_t bit(std::uint64_t page) { return std::uint64_t{1} << (page % 64); }
    static std::atomic_ref<std::uint64_t> ref(std::uint64_t* words, std::uint64_t w)
    {
        return std::atomic_ref<std::uint64_t>(words[w]);
    }
    // Calls f(word, mask) for the words covering [first, first+count) (clipped to pages()).
    template <class F>
    void for_words(std::uint64_t first, std::uint64_t count, F&& f) const
    {
        if (first >= m_pages) return;
        const std::uint64_t end = first + count < m_pages ? first + count : m_pages;
        for (std::uint64_t p = first; p < end;) {
            const std::uint64_t w = p / 64, lo = p % 64;
            const std::uint64_t hi = (w + 1) * 64 < end ? 64 : end - w * 64;
            const std::uint64_t mask = (hi - lo == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << (hi - lo)) - 1)) << lo;
            f(w, mask);
            p = w * 64 + hi;
        }
    }
    template <class Run>
    static void runs_of(std::uint64_t w, std::uint64_t bits, Run& run)
    {
        while (bits) {
            const unsigned start = static_cast<unsigned>(std::countr_zero(bits));
            const std::uint64_t shifted = bits >> start;
            const unsigned len = shifted == ~std::uint64_t{0} ? 64u : static_cast<unsigned>(std::countr_one(shifted));
            run(w * 64 + start, static_cast<std::uint64_t>(len));
            bits = len + start >= 64 ? 0 : bits & ~(((std::uint64_t{1} << len) - 1) << start);
        }
    }

    std::uint64_t* m_dirty = nullptr;
    std::uint64_t* m_flushing = nullptr;
    std::uint64_t m_pages = 0;
};

}  // namespace pagerd::util
