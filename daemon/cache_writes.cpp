// Shared regions in the page cache: clients write into the cache itself, so every client
// of the file sees a write at once, as with two MAP_SHARED mappings of one file. One
// strategy tracks writes for the whole file: uffd-wp, in the daemon. Each client's view is
// registered WP; its first write to a page faults, the page is marked dirty in the cache's
// dirty set and made writable in that view. Write-back collects the dirty pages and
// protects them again in every view before reading them, so a write after that faults and
// is recorded again; eviction never drops a page that is dirty or being written.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "cache.hpp"
#include "pagerd/util/uffd.hpp"
#include "store/store.hpp"

namespace pagerd::daemon {

namespace {

// The dirty set's layout does not depend on the cache's size (which a restarted daemon
// computes anew): dirty and flushing bits (util::DirtyBitmap) for the largest file a cache
// takes, then a bit per page the daemon loaded. Sparse: only the parts in use exist.
constexpr std::uint64_t k_max_cached_bytes = (std::uint64_t{16} << 40) + (std::uint64_t{1} << 30);

std::uint64_t round_page(std::uint64_t v) { return (v + 4095) / 4096 * 4096; }

}  // namespace

bool Cache::map_bits(util::UniqueFd bits, std::string& why)
{
    const std::uint64_t pages = k_max_cached_bytes / m_pool.page_size();
    const std::uint64_t dirty_bytes = round_page(util::DirtyBitmap::bytes(pages));
    const std::uint64_t bytes = dirty_bytes + round_page(util::DirtyBitmap::words(pages) * 8);
    if (m_reserved / m_pool.page_size() > pages) {
        why = "the cache is larger than its dirty set can describe";
        return false;
    }
    if (::ftruncate(bits.get(), static_cast<off_t>(bytes)) != 0) {
        why = std::string("sizing the cache's dirty set failed: ") + std::strerror(errno);
        return false;
    }
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, bits.get(), 0);
    if (base == MAP_FAILED) {
        why = std::string("mapping the cache's dirty set failed: ") + std::strerror(errno);
        return false;
    }
    m_bits_fd = std::move(bits);
    m_bits_base = base;
    m_bits_bytes = bytes;
    m_bits_dirty_bytes = dirty_bytes;
    m_bits = util::DirtyBitmap(base, pages);
    m_loaded_mirror = reinterpret_cast<std::uint64_t*>(static_cast<std::uint8_t*>(base) + dirty_bytes);
    m_bits_fd_number = m_bits_fd.get();
    return true;
}

void Cache::set_loaded(std::uint64_t page)
{
    m_loaded.set(page);
    if (m_loaded_mirror)
        std::atomic_ref<std::uint64_t>(m_loaded_mirror[page / 64]).fetch_or(std::uint64_t{1} << (page % 64));
}

void Cache::clear_loaded(std::uint64_t page)
{
    m_loaded.clear(page);
    if (m_loaded_mirror)
        std::atomic_ref<std::uint64_t>(m_loaded_mirror[page / 64]).fetch_and(~(std::uint64_t{1} << (page % 64)));
    if (m_written.test(page)) {
        // A page a Shared client wrote (and that was written back) leaves the cache: a load
        // read before now may hold older bytes than the file does; fill() will not use them.
        m_written.clear(page);
        m_evicted_written[page] = ++m_evict_seq;
        if (m_evicted_written.size() > 65536) {  // bounded: older loads then refill nothing
            m_evicted_written.clear();
            m_horizon = m_evict_seq;
        }
    }
}

bool Cache::stale(std::uint64_t page, std::uint64_t epoch) const
{
    if (epoch < m_horizon) return true;
    auto it = m_evicted_written.find(page);
    return it != m_evicted_written.end() && it->second > epoch;
}

std::uint64_t Cache::load_epoch() const
{
    std::lock_guard lock(m_mutex);
    return m_evict_seq;
}

bool Cache::make_writable(const std::shared_ptr<store::Store>& store, std::string& why)
{
    std::lock_guard lock(m_mutex);
    if (!m_bits_fd) {
        util::UniqueFd bits(::memfd_create("pagerd-cache-dirty", MFD_CLOEXEC));
        if (!bits) {
            why = std::string("memfd_create for the cache's dirty set failed: ") + std::strerror(errno);
            return false;
        }
        if (!map_bits(std::move(bits), why)) return false;
        m_loaded.for_each([&](std::uint64_t p) { set_loaded(p); });  // the mirror catches up
    }
    if (!m_write_store) {
        // Write-back goes through a descriptor of the daemon's own, opened from the
        // client's: no client can change its flags (O_APPEND, O_DIRECT) under it.
        m_write_store = store->reopen_for_writing(why);
        if (!m_write_store) return false;
        m_write_store_fd = m_write_store->descriptor();
    }
    return true;
}

bool Cache::adopt_bits(util::UniqueFd bits, std::shared_ptr<store::Store> write_store, std::string& why)
{
    std::lock_guard lock(m_mutex);
    if (m_bits_fd) return true;
    if (!map_bits(std::move(bits), why)) return false;
    if (write_store && !m_write_store) {
        m_write_store = std::move(write_store);
        m_write_store_fd = m_write_store->descriptor();
    }
    // What the previous daemon was writing back may not have reached the file: dirty again.
    // Only the parts of the set that exist are read (it is sparse: reading a hole through
    // the mapping would allocate it).
    const std::uint64_t words = util::DirtyBitmap::words(m_bits.pages());
    std::vector<PageRun> ranges;
    for (off_t pos = 0;;) {
        const off_t data = ::lseek(m_bits_fd.get(), pos, SEEK_DATA);
        if (data < 0 || static_cast<std::uint64_t>(data) >= m_bits_dirty_bytes) break;
        off_t hole = ::lseek(m_bits_fd.get(), data, SEEK_HOLE);
        if (hole < 0 || static_cast<std::uint64_t>(hole) > m_bits_dirty_bytes) hole = static_cast<off_t>(m_bits_dirty_bytes);
        for (std::uint64_t w = static_cast<std::uint64_t>(data) / 8; w < std::min(static_cast<std::uint64_t>(hole) / 8, 2 * words);) {
            // word w of the dirty half, or of the flushing half: pages 64 (w mod words) on
            const std::uint64_t in_half = w % words, half_end = w - in_half + words;
            const std::uint64_t stop = std::min<std::uint64_t>(half_end, static_cast<std::uint64_t>(hole) / 8);
            ranges.push_back({in_half * 64, (stop - w) * 64});
            w = stop;
        }
        pos = hole;
    }
    std::uint64_t pending = 0;
    std::sort(ranges.begin(), ranges.end(), [](const PageRun& a, const PageRun& b) { return a.first < b.first; });
    std::uint64_t done = 0;  // pages below this were counted
    for (const PageRun& r : ranges) {
        const std::uint64_t from = std::max(r.first, done), to = r.first + r.count;
        if (from >= to) continue;
        m_bits.for_each_pending(from, to - from, false, [&](std::uint64_t p, std::uint64_t n) { m_bits.mark_range(p, n); });
        m_bits.clear_flushing(from, to - from);
        pending += m_bits.count_dirty(from, to - from);
        // Written by a client: once written back and evicted, a load read before must not
        // bring its older bytes back (fill(), stale()).
        m_bits.for_each_pending(from, to - from, true, [&](std::uint64_t p, std::uint64_t n) {
            for (std::uint64_t q = p; q < p + n; ++q) m_written.set(q);
        });
        done = to;
    }
    m_pending = pending;
    m_pool.dirty_changed(static_cast<std::int64_t>(pending));
    return true;
}

bool Cache::loaded_before_restart(std::uint64_t page) const
{
    return (m_loaded_mirror &&
            std::atomic_ref<std::uint64_t>(m_loaded_mirror[page / 64]).load() >> (page % 64) & 1) ||
           pending_locked(page);
}

bool Cache::keeping_for_restart() const { return m_pool.keeping(); }
std::uint32_t Cache::page_size() const { return m_pool.page_size(); }

int Cache::write_store_fd() const { return m_write_store_fd.load(std::memory_order_acquire); }

bool Cache::writable() const
{
    std::lock_guard lock(m_mutex);
    return static_cast<bool>(m_bits_fd);
}

int Cache::bits_fd() const { return m_bits_fd_number.load(std::memory_order_acquire); }

util::UniqueFd Cache::open_read_write(std::string& why) const
{
    const std::string path = "/proc/self/fd/" + std::to_string(m_memfd.get());
    util::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) why = "reopening the cache read-write failed: " + std::string(std::strerror(errno));
    return fd;
}

std::shared_ptr<store::Store> Cache::write_store() const
{
    std::lock_guard lock(m_mutex);
    return m_write_store;
}

bool Cache::pending_locked(std::uint64_t page) const
{
    if (!m_bits || page >= m_bits.pages()) return false;
    return m_bits.is_dirty(page) || m_bits.is_flushing(page);
}

bool Cache::pending(std::uint64_t page) const
{
    std::lock_guard lock(m_mutex);
    return pending_locked(page);
}

std::uint64_t Cache::dirty_pages() const
{
    std::lock_guard lock(m_mutex);
    return m_pending;
}

// Lock-free (the bitmap's words are atomic; m_bits is set before any Shared region maps the
// cache and never again): called under a worker's table lock, which collect() takes while it
// holds m_mutex.
std::uint64_t Cache::dirty_pages(std::uint64_t first, std::uint64_t count) const
{
    std::uint64_t n = 0;
    if (m_bits)
        m_bits.for_each_pending(first, count, true, [&](std::uint64_t, std::uint64_t k) { n += k; });
    return n;
}

bool Cache::mark_written(int uffd, std::uint64_t addr, std::uint64_t page)
{
    const std::uint64_t ps = m_pool.page_size();
    std::lock_guard lock(m_mutex);
    const bool held = m_bits && m_loaded.test(page) && page < m_bits.pages();
    if (held) {
        if (!pending_locked(page)) {
            ++m_pending;
            m_pool.dirty_changed(1);
        }
        m_bits.mark(page);
        m_written.set(page);
    }
    // Writable in this view now (or, for a page no longer held, woken: it faults again).
    uffdio_writeprotect wp{{addr, ps}, 0};
    if (held && ::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0) return true;
    util::uffd_wake(uffd, addr, ps);
    return held;
}

std::vector<PageRun> Cache::collect(std::uint64_t first, std::uint64_t count)
{
    m_writeback_wanted = false;
    std::vector<PageRun> runs;
    std::lock_guard lock(m_mutex);
    if (!m_bits) return runs;
    m_bits.collect(first, count, [&](std::uint64_t p, std::uint64_t n) {
        runs.push_back({p, n});
        // Protected everywhere before the writer reads the pages. A view that could not be
        // protected (its client is changing its address space, or unregistered its view)
        // may still write unseen: the run stays dirty, and the next write-back takes it
        // again. Such stuck pages do not count towards the writers' throttle (one client
        // must not slow every writer down) nor ask for write-backs of their own.
        const bool ok = m_pool.protect_views(*this, p, n);
        if (!ok) m_bits.restore_dirty(p, n);
        for (std::uint64_t q = p; q < p + n; ++q) {
            if (!ok && !m_stuck.test(q)) {
                m_stuck.set(q);
                m_pool.dirty_changed(-1);
            } else if (ok && m_stuck.test(q)) {
                m_stuck.clear(q);
                m_pool.dirty_changed(1);
            }
        }
    });
    return runs;
}

bool Cache::writeback_useful() const { return unstuck_dirty_pages() > 0; }

std::uint64_t Cache::unstuck_dirty_pages() const
{
    std::lock_guard lock(m_mutex);
    return m_pending - std::min(m_pending, m_stuck.count());
}

void Cache::written(const std::vector<PageRun>& runs, bool ok)
{
    std::lock_guard lock(m_mutex);
    if (!m_bits) return;
    for (const PageRun& r : runs) {
        if (!ok) m_bits.restore_dirty(r.first, r.count);
        for (std::uint64_t p = r.first; p < r.first + r.count; ++p) {
            const bool was = m_bits.is_flushing(p);
            m_bits.clear_flushing(p, 1);
            if (was && !m_bits.is_dirty(p) && m_pending) {
                --m_pending;
                m_pool.dirty_changed(-1);
            }
        }
    }
}

}  // namespace pagerd::daemon
