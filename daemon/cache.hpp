// The daemon's page cache: one memfd per backing file (same device and inode), shared by
// every CACHE region of every client that maps that file, bounded by --memory-max.
//
// Pages enter a cache only through UFFDIO_COPY into the daemon's own mapping of it, which
// inserts a whole, filled page at once (never a zero or half-written page that a client
// could see) and charges it to the daemon's memory cgroup. Clients map the cache
// MAP_PRIVATE from a read-only descriptor and register MISSING | MINOR: a page the cache
// lacks is a MISSING fault (loaded, then mapped with UFFDIO_CONTINUE), a page it holds is a
// MINOR fault, mapped with UFFDIO_CONTINUE after checking that the daemon loaded that page
// itself. A client can still create a page in a hole (a touch through a mapping it did not
// register); such a page is never shown to anyone: it is punched and loaded properly.
// Eviction punches holes (FALLOC_FL_PUNCH_HOLE), which unmaps the page from every client.
#pragma once
#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "eviction.hpp"
#include "pagerd/util/dirty_bitmap.hpp"
#include "pagerd/util/unique_fd.hpp"
#include "store/store.hpp"

namespace pagerd::daemon {

class CachePool;

struct PageRun {
    std::uint64_t first;  // page index (in a region's memfd, or in a cache)
    std::uint64_t count;
};

// A set of page indexes, one bit a page, in chunks of 512 pages (2 MiB of cache) made on
// first use and freed when emptied: its memory follows the pages held, about 100 bytes per
// chunk in use, however sparse they are.
class PageBits {
public:
    bool test(std::uint64_t page) const;
    void set(std::uint64_t page);
    void clear(std::uint64_t page);
    std::uint64_t count() const { return m_count; }
    template <class F>
    void for_each(F&& f) const
    {
        for (const auto& [chunk, words] : m_chunks)
            for (std::size_t w = 0; w < k_words; ++w)
                for (std::uint64_t b = 0; b < 64; ++b)
                    if (words[w] >> b & 1) f(chunk * k_pages + w * 64 + b);
    }

private:
    static constexpr std::uint64_t k_pages = 512;
    static constexpr std::size_t k_words = k_pages / 64;
    std::unordered_map<std::uint64_t, std::array<std::uint64_t, k_words>> m_chunks;
    std::uint64_t m_count = 0;
};

class Cache {
public:
    Cache(CachePool& pool, std::uint32_t id, dev_t dev, ino_t ino, util::UniqueFd memfd, std::uint8_t* base,
          std::uint64_t size, std::uint64_t reserved);
    ~Cache();
    Cache(const Cache&) = delete;
    Cache& operator=(const Cache&) = delete;

    std::uint32_t id() const { return m_id; }
    dev_t dev() const { return m_dev; }
    ino_t ino() const { return m_ino; }
    int memfd() const { return m_memfd.get(); }
    std::uint64_t size() const;  // bytes of the file it serves (page-rounded; the memfd spans reserved())
    std::uint64_t reserved() const { return m_reserved; }
    // Grows the memfd to at least `bytes` (the file grew): false with why when it cannot.
    bool grow(std::uint64_t bytes, std::string& why);
    // A descriptor of the cache for a client: read-only, so it can map the cache
    // MAP_PRIVATE (writes stay its own) but never write it, grow it or punch it.
    util::UniqueFd open_read_only(std::string& why) const;

    // Puts [offset, offset + len) of `buf` into the cache (page multiples; the last page
    // may be partial only at the end of the file and is zero-filled by the caller). Pages
    // the daemon loaded already stay as they are. Returns the pages newly loaded; `failed`
    // gets the pages that could not be put in. epoch: load_epoch() when the read started;
    // a page a Shared client wrote, that was written back and evicted since, is not filled
    // (the buffer may be older than the file): its fault loads it again.
    std::vector<std::uint64_t> fill(std::uint64_t offset, const std::uint8_t* buf, std::uint64_t len,
                                    std::uint64_t epoch, std::vector<std::uint64_t>& failed);
    std::uint64_t load_epoch() const;
    // Maps the loaded pages of [offset, offset + len) into a client, at `addr`, with
    // UFFDIO_CONTINUE on its userfaultfd, up to the first page the daemon did not load.
    // Returns the bytes covered (mapped now or already mapped); err: the errno that stopped
    // it; fresh: the bytes mapped now. Wakes nobody: the caller does.
    // wp: write-protected (a Shared view: the first write faults and is recorded).
    std::uint64_t map_into(int uffd, std::uint64_t addr, std::uint64_t offset, std::uint64_t len, int& err,
                           std::uint64_t& fresh, bool wp = false);
    // A page the memfd holds that the daemon did not load (a client made it): punched.
    void drop_foreign(std::uint64_t page);
    bool loaded(std::uint64_t page) const;
    std::uint64_t resident_pages() const;
    // Eviction: punches pages [first, first + count) out of the memfd (each one the policy
    // chose, so each one loaded), except pages dirty or being written back, which go to
    // `kept`; returns how many loaded pages went.
    std::uint64_t evict(std::uint64_t first, std::uint64_t count, std::vector<std::uint64_t>& kept);
    // Restart: every page the memfd holds counts as loaded (the previous daemon loaded it).
    std::vector<std::uint64_t> adopt_present_pages();

    // ---- Shared regions: writes (cache_writes.cpp) -------------------------------------
    // Clients that map the file Shared write into the cache; the daemon tracks their writes
    // with uffd-wp in every view (one strategy per file) and keeps the dirty set in a memfd
    // of its own, never shown to clients, that a restarted daemon takes back.
    //
    // Makes the cache writable: the dirty set (adopted from `bits` after a restart, else
    // new) and a descriptor of the file open for writing, for write-back. False with why.
    bool make_writable(const std::shared_ptr<store::Store>& store, std::string& why);
    // Restart, before adopt_present_pages: the dirty set, and the descriptor write-back used.
    bool adopt_bits(util::UniqueFd bits, std::shared_ptr<store::Store> write_store, std::string& why);
    int write_store_fd() const;  // -1 while none; lock-free (fdstore calls it under a table lock)
    bool writable() const;
    int bits_fd() const;  // -1 while not writable; lock-free (fdstore calls it under a table lock)
    // A descriptor for a Shared client: read-write (it maps the cache MAP_SHARED), still
    // unable to shrink it or change its seals.
    util::UniqueFd open_read_write(std::string& why) const;
    // A client's first write to a page of its Shared view (at `addr` on `uffd`): the page is
    // marked dirty, then made writable in that view, both under the lock, so that a
    // write-back protecting it again either sees the bit or protects after. False when the
    // cache does not hold the page (evicted meanwhile): the writer is only woken, faults
    // again and loads it.
    bool mark_written(int uffd, std::uint64_t addr, std::uint64_t page);
    // Write-back, step 1: the dirty pages of [first, first + count) become flushing and are
    // write-protected in every client's view (a later write faults and marks them dirty
    // again). Returns their runs. A run some view could not protect stays dirty too.
    std::vector<PageRun> collect(std::uint64_t first, std::uint64_t count);
    // Step 2: the runs reached the file (ok) or not (they become dirty again).
    void written(const std::vector<PageRun>& runs, bool ok);
    std::uint64_t dirty_pages() const;  // dirty or being written
    std::uint64_t dirty_pages(std::uint64_t first, std::uint64_t count) const;  // of a range; lock-free
    bool pending(std::uint64_t page) const;  // dirty or flushing: not to be evicted
    std::shared_ptr<store::Store> write_store() const;
    // Eviction met dirty pages: true for the first caller since the last collect(), which
    // then queues a write-back.
    bool want_writeback() { return !m_writeback_wanted.exchange(true); }
    bool writeback_useful() const;  // some dirty page is not stuck (see collect())
    std::uint64_t unstuck_dirty_pages() const;
    bool keeping_for_restart() const;
    std::uint32_t page_size() const;
    // Held by a writer across collect(), the write and written(): one write-back of a
    // cache at a time, so an older copy of a page never lands after a newer one.
    std::unique_lock<std::mutex> lock_writeback() { return std::unique_lock(m_writeback_mutex); }

private:
    bool punch(std::uint64_t page);  // caller holds m_mutex
    std::uint64_t evict_locked(std::uint64_t first, std::uint64_t count);
    bool map_bits(util::UniqueFd bits, std::string& why);  // caller holds m_mutex
    bool pending_locked(std::uint64_t page) const;
    // m_loaded and its copy in the dirty set (writable caches), which a restart reads.
    void set_loaded(std::uint64_t page);
    void clear_loaded(std::uint64_t page);
    bool loaded_before_restart(std::uint64_t page) const;
    bool stale(std::uint64_t page, std::uint64_t epoch) const;

    CachePool& m_pool;
    const std::uint32_t m_id;
    const dev_t m_dev;
    const ino_t m_ino;
    util::UniqueFd m_memfd;
    std::uint8_t* m_base;        // the daemon's mapping, registered with the pool's uffd
    const std::uint64_t m_reserved;  // bytes of address space mapped: the most it can grow to
    // The bits and every change of the memfd's pages. Lock order: m_mutex, then a worker's
    // table lock (collect() protects views); never the other way round.
    mutable std::mutex m_mutex;
    std::uint64_t m_size = 0;
    PageBits m_loaded;
    // Shared regions (cache_writes.cpp)
    util::UniqueFd m_bits_fd;  // the dirty set: util::DirtyBitmap over m_reserved pages
    std::atomic<int> m_bits_fd_number{-1};
    void* m_bits_base = nullptr;
    std::uint64_t m_bits_bytes = 0, m_bits_dirty_bytes = 0;
    util::DirtyBitmap m_bits;
    std::uint64_t* m_loaded_mirror = nullptr;  // in the dirty set's memfd, after m_bits
    PageBits m_written;  // pages Shared clients wrote since they were loaded
    PageBits m_stuck;    // dirty pages some view could not be protected for at the last write-back
    std::uint64_t m_evict_seq = 0, m_horizon = 0;
    std::unordered_map<std::uint64_t, std::uint64_t> m_evicted_written;  // page -> m_evict_seq
    std::atomic<int> m_write_store_fd{-1};
    std::uint64_t m_pending = 0;  // pages dirty or flushing
    std::shared_ptr<store::Store> m_write_store;
    std::atomic<bool> m_writeback_wanted{false};
    std::mutex m_writeback_mutex;
};

// Every cache of the daemon, the budget and the eviction policy. Thread-safe.
class CachePool {
public:
    CachePool(std::uint64_t budget_bytes, std::uint32_t page_size);
    ~CachePool();
    CachePool(const CachePool&) = delete;
    CachePool& operator=(const CachePool&) = delete;

    // Why the cache cannot work on this kernel, or "" (probed at start).
    const std::string& unavailable() const { return m_unavailable; }
    // The cache of `store` (made on first use; shared by every store of the same identity),
    // spanning at least `min_size` bytes. Null with why when it cannot be made.
    std::shared_ptr<Cache> open(const store::Store& store, std::uint64_t min_size, std::string& why);
    // The cache of `store` if there is one, else null.
    std::shared_ptr<Cache> find(const store::Store& store);
    // Restart: the cache memfd an earlier daemon kept for `store`, with its dirty set and
    // its write-back descriptor if Shared regions wrote to it (else empty and null).
    std::shared_ptr<Cache> adopt(util::UniqueFd memfd, util::UniqueFd bits, std::shared_ptr<store::Store> write_store,
                                 const store::Store& store, std::string& why);
    // Pages newly loaded into `c`: counted, told to the policy, and the budget enforced.
    void loaded(Cache& c, const std::vector<std::uint64_t>& pages);
    void count_hits(std::uint64_t pages) { m_hits.fetch_add(pages, std::memory_order_relaxed); }
    void set_budget(std::uint64_t bytes);
    // The daemon stops for a restart: caches closing from now on stay in the descriptor
    // store with their pages, for the next daemon.
    void keep_for_restart() { m_keep = true; }
    bool keeping() const { return m_keep; }
    // The daemon stops while a forked child it served lives on: caches closing from now on
    // keep their pages (the child's mapped pages must not turn into zeros: its userfaultfd
    // is gone, nothing would catch the fault; fork.cpp). The kernel frees them with the
    // last mapping.
    void spare_pages() { m_spare = true; }
    bool sparing() const { return m_spare; }
    // Pages loaded ahead of the touches (read-ahead windows of every worker) stay at least
    // this long on probation before a scan can push them out.
    void set_min_probation(std::uint64_t bytes);

    // Write-protects pages [first, first + count) of `c` in every client's Shared view of
    // it; false if any view could not be protected. Set once the workers exist.
    using ViewProtector = std::function<bool(const Cache& c, std::uint64_t first, std::uint64_t count)>;
    void set_view_protector(ViewProtector f)
    {
        std::lock_guard lock(m_protect_mutex);
        m_protect = std::move(f);
    }
    bool protect_views(const Cache& c, std::uint64_t first, std::uint64_t count) const
    {
        std::lock_guard lock(m_protect_mutex);  // (held while it runs: unset only once none does)
        return m_protect ? m_protect(c, first, count) : false;
    }
    // Queues a write-back of every dirty page of `c` (off the fault path). Set once the
    // writers exist.
    using WritebackQueue = std::function<void(std::shared_ptr<Cache> c)>;
    void set_writeback_queue(WritebackQueue f)
    {
        std::lock_guard lock(m_queue_mutex);
        m_queue_writeback = std::move(f);
    }
    // Drops pages until the cache is within its budget (after a write-back made some
    // evictable).
    void trim() { enforce_budget(); }
    void count_writebacks(std::uint64_t pages) { m_writebacks.fetch_add(pages, std::memory_order_relaxed); }
    // Queues a write-back of every dirty page of `c` unless one is queued already.
    void request_writeback(const std::shared_ptr<Cache>& c);
    // Dirty pages throttle writers: a first write to a clean page of a cache waits (up to
    // a second) while that cache's dirty pages exceed a quarter of the budget, or all
    // caches' exceed half of it and this one holds a sixteenth. (Per file: what one client
    // pins in its file never holds up the writers of others.)
    bool dirty_over_limit() const
    {
        const std::int64_t dirty = m_dirty_pages.load(std::memory_order_relaxed);
        return dirty > 0 && static_cast<std::uint64_t>(dirty) * m_page > m_budget.load(std::memory_order_relaxed) / 4;
    }
    bool writers_must_wait(std::uint64_t cache_dirty_pages) const
    {
        const std::uint64_t budget = m_budget.load(std::memory_order_relaxed), mine = cache_dirty_pages * m_page;
        const std::int64_t all = m_dirty_pages.load(std::memory_order_relaxed);
        return mine > budget / 4 || (all > 0 && static_cast<std::uint64_t>(all) * m_page > budget / 2 && mine > budget / 16);
    }
    // Every cache open now (for the write-back at a stop).
    std::vector<std::shared_ptr<Cache>> caches() const;
    void dirty_changed(std::int64_t pages) { m_dirty_pages.fetch_add(pages, std::memory_order_relaxed); }

    std::uint32_t page_size() const { return m_page; }
    int uffd() const { return m_uffd.get(); }
    struct Figures {
        std::uint64_t budget = 0, bytes = 0, files = 0, loads = 0, hits = 0, evictions = 0, refaults = 0;
        std::uint64_t dirty_bytes = 0, writebacks = 0;
    };
    Figures figures() const;
    // Per file, for status: size, resident bytes, regions mapping it.
    struct FileFigures {
        dev_t dev = 0;
        ino_t ino = 0;
        std::uint64_t size = 0, resident = 0, dirty = 0;
        long users = 0;
    };
    std::vector<FileFigures> files() const;

    // The default budget: half of the memory this daemon may use (RAM, or its cgroup limit).
    static std::uint64_t default_budget();

private:
    friend class Cache;
    void closed(Cache& c);  // from ~Cache
    std::shared_ptr<Cache> make(util::UniqueFd memfd, dev_t dev, ino_t ino, std::uint64_t size, std::uint64_t reserved,
                                std::string& why);
    std::uint64_t reservation(std::uint64_t size) const;  // bytes a cache of a file of `size` spans
    void enforce_budget();
    // Pages now held by c: to the policy, then the budget enforced; counted as loads or not.
    void admit(Cache& c, const std::vector<std::uint64_t>& pages, bool count_loads);

    const std::uint32_t m_page;
    util::UniqueFd m_uffd;  // the daemon's own: its mappings of the caches are registered here
    std::string m_unavailable;
    mutable std::mutex m_mutex;
    std::map<std::pair<dev_t, ino_t>, std::weak_ptr<Cache>> m_by_file;
    std::unordered_map<std::uint32_t, std::weak_ptr<Cache>> m_by_id;
    std::uint32_t m_next_id = 1;
    static constexpr std::uint64_t k_max_file = std::uint64_t{16} << 40;
    static constexpr std::uint64_t k_max_reserved = std::uint64_t{64} << 40;
    std::uint64_t m_reserved_total = 0;  // address space of every cache's mapping
    std::atomic<bool> m_keep{false};
    std::atomic<bool> m_spare{false};
    EvictionPolicy m_policy;
    // Held while the hooks run (unset only once none runs). Lock order: a cache's lock, then
    // m_protect_mutex, then a worker's table lock; m_queue_mutex before a cache's lock (a
    // queued write-back takes none, but no cache lock is held while queueing).
    mutable std::mutex m_protect_mutex, m_queue_mutex;
    ViewProtector m_protect;
    WritebackQueue m_queue_writeback;
    std::atomic<std::uint64_t> m_writebacks{0};
    std::atomic<std::int64_t> m_dirty_pages{0};  // of every cache
    std::atomic<std::uint64_t> m_budget{0}, m_resident{0}, m_loads{0}, m_hits{0}, m_evictions{0}, m_refaults{0};
};

}  // namespace pagerd::daemon
