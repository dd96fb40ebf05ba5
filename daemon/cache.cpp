#include "cache.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "fdstore.hpp"
#include "pagerd/util/uffd.hpp"

namespace pagerd::daemon {
namespace {

std::uint64_t round_up(std::uint64_t v, std::uint64_t unit) { return (v + unit - 1) / unit * unit; }

util::UniqueFd new_uffd()
{
    util::UniqueFd fd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    if (!fd) {  // unprivileged userfaultfd off: the device node still works for its group
        util::UniqueFd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
        if (dev) fd.reset(::ioctl(dev.get(), USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK));
    }
    return fd;
}

// A number in a file (cgroup limits); 0 when absent or "max".
std::uint64_t read_number(const std::string& path)
{
    std::ifstream in(path);
    std::string s;
    if (!(in >> s) || s == "max") return 0;
    try {
        return std::stoull(s);
    } catch (...) {
        return 0;
    }
}

}  // namespace

// ---- PageBits ------------------------------------------------------------------------

bool PageBits::test(std::uint64_t page) const
{
    auto it = m_chunks.find(page / k_pages);
    if (it == m_chunks.end()) return false;
    const std::uint64_t i = page % k_pages;
    return it->second[i / 64] >> (i % 64) & 1;
}

void PageBits::set(std::uint64_t page)
{
    auto& words = m_chunks[page / k_pages];  // zeroed when new
    const std::uint64_t i = page % k_pages, bit = std::uint64_t{1} << (i % 64);
    if (!(words[i / 64] & bit)) {
        words[i / 64] |= bit;
        ++m_count;
    }
}

void PageBits::clear(std::uint64_t page)
{
    auto it = m_chunks.find(page / k_pages);
    if (it == m_chunks.end()) return;
    const std::uint64_t i = page % k_pages, bit = std::uint64_t{1} << (i % 64);
    if (it->second[i / 64] & bit) {
        it->second[i / 64] &= ~bit;
        --m_count;
        bool empty = true;
        for (const std::uint64_t w : it->second) empty = empty && w == 0;
        if (empty) m_chunks.erase(it);
    }
}

// ---- Cache ---------------------------------------------------------------------------

Cache::Cache(CachePool& pool, std::uint32_t id, dev_t dev, ino_t ino, util::UniqueFd memfd, std::uint8_t* base,
             std::uint64_t size, std::uint64_t reserved)
    : m_pool(pool), m_id(id), m_dev(dev), m_ino(ino), m_memfd(std::move(memfd)), m_base(base), m_reserved(reserved),
      m_size(size)
{
}

Cache::~Cache()
{
    m_pool.closed(*this);
    m_pool.dirty_changed(-static_cast<std::int64_t>(m_pending - std::min(m_pending, m_stuck.count())));
    if (!m_pool.keeping()) {
        if (m_pending)
            spdlog::error("cache {}: closing with {} page(s) written by Shared regions that could not be written "
                          "back to the file", m_id, m_pending);
        fdstore::forget_cache(*this);
        // Out of the budget now, so out of memory too: a client that still holds a
        // descriptor or a mapping of the memfd must not keep its pages resident, uncounted
        // (nor pages a Shared client wrote past the file's end).
        struct stat st{};
        const std::uint64_t end = ::fstat(m_memfd.get(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : m_size;
        if (!m_pool.sparing())
            ::fallocate(m_memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                        static_cast<off_t>(std::max(end, m_size)));
    }
    ::munmap(m_base, m_reserved);
    if (m_bits_base) ::munmap(m_bits_base, m_bits_bytes);
}

std::uint64_t Cache::size() const
{
    std::lock_guard lock(m_mutex);
    return m_size;
}

bool Cache::grow(std::uint64_t bytes, std::string& why)
{
    std::lock_guard lock(m_mutex);
    if (bytes <= m_size) return true;
    if (bytes > m_reserved) {
        why = "the file grew past what its cache can hold (" + std::to_string(m_reserved) +
              " bytes); map it again once its other regions are gone";
        return false;
    }
    // The memfd spans the whole reservation (sealed against growing and shrinking): only
    // what the daemon serves grows. (A cache an older daemon made spans the file only.)
    struct stat st{};
    if (::fstat(m_memfd.get(), &st) != 0 ||
        (static_cast<std::uint64_t>(st.st_size) < bytes && ::ftruncate(m_memfd.get(), static_cast<off_t>(bytes)) != 0)) {
        why = std::string("growing the cache failed: ") + std::strerror(errno);
        return false;
    }
    m_size = bytes;
    return true;
}

util::UniqueFd Cache::open_read_only(std::string& why) const
{
    const std::string path = "/proc/self/fd/" + std::to_string(m_memfd.get());
    util::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) why = "reopening the cache read-only failed: " + std::string(std::strerror(errno));
    return fd;
}

bool Cache::punch(std::uint64_t page)
{
    const std::uint64_t ps = m_pool.page_size();
    return ::fallocate(m_memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(page * ps),
                       static_cast<off_t>(ps)) == 0;
}

std::vector<std::uint64_t> Cache::fill(std::uint64_t offset, const std::uint8_t* buf, std::uint64_t len,
                                       std::uint64_t epoch, std::vector<std::uint64_t>& failed)
{
    const std::uint64_t ps = m_pool.page_size();
    std::vector<std::uint64_t> added;
    std::lock_guard lock(m_mutex);
    len = std::min(len, m_size > offset ? m_size - offset : 0);
    std::uint64_t off = 0;
    unsigned retries = 0;
    const bool check = m_bits && epoch != m_evict_seq;  // written pages were evicted since the read
    auto usable = [&](std::uint64_t o) { return !m_loaded.test((offset + o) / ps) && !(check && stale((offset + o) / ps, epoch)); };
    while (off < len) {
        if (!usable(off)) {  // loaded already, or stale (not filled: its fault loads it again)
            off += ps;
            continue;
        }
        std::uint64_t end = off + ps;
        while (end < len && usable(end)) end += ps;
        uffdio_copy cp{};
        cp.dst = reinterpret_cast<std::uint64_t>(m_base + offset + off);
        cp.src = reinterpret_cast<std::uint64_t>(buf + off);
        cp.len = end - off;
        cp.mode = UFFDIO_COPY_MODE_DONTWAKE;
        const bool ok = ::ioctl(m_pool.uffd(), UFFDIO_COPY, &cp) == 0;
        const int err = errno;
        const std::uint64_t copied = ok ? cp.len : cp.copy > 0 ? static_cast<std::uint64_t>(cp.copy) : 0;
        for (std::uint64_t o = off; o < off + copied; o += ps) {
            set_loaded((offset + o) / ps);
            added.push_back((offset + o) / ps);
        }
        off += copied;
        if (copied) retries = 0;
        if (ok || copied) continue;
        if (err == EEXIST && ++retries <= 4) {
            // The memfd holds a page the daemon did not load: a client made it through a
            // mapping it did not register. Nobody sees it: out it goes, then ours goes in.
            punch((offset + off) / ps);
        } else if (err == EEXIST || (err == EAGAIN && ++retries <= 16)) {
            if (err == EEXIST) {  // someone keeps making it: leave it unloaded
                failed.push_back((offset + off) / ps);
                off += ps;
                retries = 0;
            }
        } else {
            spdlog::warn("cache {}: UFFDIO_COPY at offset {} failed: {}", m_id, offset + off, std::strerror(err));
            for (; off < len; off += ps) failed.push_back((offset + off) / ps);
            break;
        }
    }
    return added;
}

std::uint64_t Cache::map_into(int uffd, std::uint64_t addr, std::uint64_t offset, std::uint64_t len, int& err,
                              std::uint64_t& fresh, bool wp)
{
    const std::uint64_t ps = m_pool.page_size();
    err = 0;
    fresh = 0;
    std::uint64_t covered = 0;
    while (covered < len && err == 0) {
        // The lock is held for at most 2 MiB of pages at a time: a client slow to give its
        // mmap lock holds up the other users of the file that little.
        std::lock_guard lock(m_mutex);
        std::uint64_t n = 0;
        while (covered + n < len && n < 512 * ps && m_loaded.test((offset + covered + n) / ps)) n += ps;
        if (n == 0) break;
        const std::uint64_t end = covered + n;
        while (covered < end) {
            uffdio_continue cont{};
            cont.range.start = addr + covered;
            cont.range.len = end - covered;
            // The caller wakes the faulting threads once it has counted the fault.
            cont.mode = UFFDIO_CONTINUE_MODE_DONTWAKE | (wp ? UFFDIO_CONTINUE_MODE_WP : 0);
            const bool ok = ::ioctl(uffd, UFFDIO_CONTINUE, &cont) == 0;
            const int e = errno;
            const std::uint64_t done = ok ? cont.range.len : cont.mapped > 0 ? static_cast<std::uint64_t>(cont.mapped) : 0;
            covered += done;
            fresh += done;
            if (ok || done) continue;
            if (e == EEXIST) {  // mapped already (or the client's private copy): go on after it
                covered += ps;
                continue;
            }
            // A page the bits say is loaded, gone from the memfd: a Shared client punched
            // it through its read-write descriptor. Not loaded any more: the fault loads it.
            if (e == EFAULT) clear_loaded((offset + covered) / ps);
            err = e;
            break;
        }
    }
    return covered;
}

void Cache::drop_foreign(std::uint64_t page)
{
    std::lock_guard lock(m_mutex);
    if (!m_loaded.test(page)) punch(page);
}

bool Cache::loaded(std::uint64_t page) const
{
    std::lock_guard lock(m_mutex);
    return m_loaded.test(page);
}

std::uint64_t Cache::resident_pages() const
{
    std::lock_guard lock(m_mutex);
    return m_loaded.count();
}

std::uint64_t Cache::evict(std::uint64_t first, std::uint64_t count, std::vector<std::uint64_t>& kept)
{
    std::lock_guard lock(m_mutex);
    if (m_bits) {  // written by Shared regions: dirty pages stay until written back
        std::uint64_t n = 0;
        for (std::uint64_t p = first; p < first + count;) {
            if (pending_locked(p)) {
                kept.push_back(p++);
                continue;
            }
            std::uint64_t q = p + 1;
            while (q < first + count && !pending_locked(q)) ++q;
            n += evict_locked(p, q - p);
            p = q;
        }
        return n;
    }
    return evict_locked(first, count);
}

std::uint64_t Cache::evict_locked(std::uint64_t first, std::uint64_t count)
{
    const std::uint64_t ps = m_pool.page_size();
    if (::fallocate(m_memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(first * ps),
                    static_cast<off_t>(count * ps)) != 0) {
        spdlog::warn("cache {}: punching {} page(s) at {} failed: {}", m_id, count, first, std::strerror(errno));
        return 0;
    }
    std::uint64_t n = 0;
    for (std::uint64_t p = first; p < first + count; ++p)
        if (m_loaded.test(p)) {
            clear_loaded(p);
            ++n;
        }
    return n;
}

// The previous daemon's bits are gone. A page it loaded holds the file's bytes. In a cache
// no client can write, a page a client made in a hole (touching it through a mapping it
// did not register) holds zeros: zero pages are punched (a file's own zero page is loaded
// again, no harm) and the others count as loaded. A writable cache's dirty set keeps a
// copy of which pages the daemon loaded; the others are punched, whatever they hold.
// Pages past the file's end are punched too.
std::vector<std::uint64_t> Cache::adopt_present_pages()
{
    const std::uint64_t ps = m_pool.page_size();
    std::vector<std::uint64_t> pages;
    std::vector<std::uint8_t> buf(256 * ps);
    std::lock_guard lock(m_mutex);
    off_t pos = 0;
    struct stat st{};
    const std::uint64_t span = ::fstat(m_memfd.get(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : m_size;
    while (static_cast<std::uint64_t>(pos) < span) {
        const off_t data = ::lseek(m_memfd.get(), pos, SEEK_DATA);
        if (data < 0) break;
        off_t hole = ::lseek(m_memfd.get(), data, SEEK_HOLE);
        if (hole < 0) hole = static_cast<off_t>(span);
        for (std::uint64_t at = static_cast<std::uint64_t>(data) / ps * ps; at < static_cast<std::uint64_t>(hole);) {
            const std::uint64_t n = std::min<std::uint64_t>(buf.size(), static_cast<std::uint64_t>(hole) - at);
            const ssize_t got = ::pread(m_memfd.get(), buf.data(), n, static_cast<off_t>(at));
            if (got <= 0) break;
            for (std::uint64_t o = 0; o + ps <= static_cast<std::uint64_t>(got); o += ps) {
                const std::uint8_t* q = buf.data() + o;
                const std::uint64_t page = (at + o) / ps;
                const bool zero = q[0] == 0 && std::memcmp(q, q + 1, ps - 1) == 0;
                // A writable cache's dirty set says which pages the daemon loaded (a Shared
                // client can write any bytes into a hole); a read-only one's pages a client
                // made are zeros.
                const bool ours = at + o < m_size && (m_bits ? loaded_before_restart(page) : !zero);
                if (!ours) {
                    punch(page);
                } else {
                    set_loaded(page);
                    pages.push_back(page);
                }
            }
            at += static_cast<std::uint64_t>(got) / ps * ps;
            if (static_cast<std::uint64_t>(got) < ps) break;
        }
        pos = hole;
    }
    return pages;
}

// ---- CachePool -----------------------------------------------------------------------

CachePool::CachePool(std::uint64_t budget_bytes, std::uint32_t page_size)
    : m_page(page_size), m_policy(std::max<std::uint64_t>(budget_bytes / page_size, 1))
{
    m_budget = budget_bytes;
    m_uffd = new_uffd();
    if (!m_uffd) {
        m_unavailable = std::string("cannot create the cache's userfaultfd: ") + std::strerror(errno);
        return;
    }
    // SIGBUS: a bug that made the daemon touch a hole of its own mapping would crash it
    // loudly instead of hanging a thread on a fault nobody reads.
    uffdio_api api{UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_SIGBUS, 0};
    if (::ioctl(m_uffd.get(), UFFDIO_API, &api) != 0) {
        m_unavailable = std::string("userfaultfd lacks shmem support (UFFD_FEATURE_MISSING_SHMEM): ") +
                        std::strerror(errno);
        m_uffd.reset();
    }
}

CachePool::~CachePool() = default;

std::uint64_t CachePool::reservation(std::uint64_t size) const
{
    return round_up(std::max<std::uint64_t>(size, m_page), m_page) + (std::uint64_t{1} << 30);
}

std::shared_ptr<Cache> CachePool::make(util::UniqueFd memfd, dev_t dev, ino_t ino, std::uint64_t size,
                                       std::uint64_t reserved, std::string& why)
{
    // The daemon maps each cache whole, with 1 GiB to grow into if the file grows while
    // mapped: address space only, free until touched, but finite. A client can name a huge
    // sparse file: files above k_max_file are not cached, and all caches together reserve
    // at most k_max_reserved (a client over it gets LIMIT, the others keep theirs).
    if (size > k_max_file) {
        why = "the file is larger than the page cache takes (" + std::to_string(k_max_file >> 40) + " TiB)";
        return nullptr;
    }
    if (m_reserved_total + reserved > k_max_reserved) {
        why = "the page cache's address space is used up (" + std::to_string(k_max_reserved >> 40) +
              " TiB of files cached at once)";
        return nullptr;
    }
    void* base = ::mmap(nullptr, reserved, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, memfd.get(), 0);
    if (base == MAP_FAILED) {
        why = std::string("mapping the cache failed: ") + std::strerror(errno);
        return nullptr;
    }
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(base);
    reg.range.len = reserved;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(m_uffd.get(), UFFDIO_REGISTER, &reg) != 0) {
        why = std::string("registering the cache with the daemon's userfaultfd failed: ") + std::strerror(errno);
        ::munmap(base, reserved);
        return nullptr;
    }
    const std::uint32_t id = m_next_id++;
    m_reserved_total += reserved;
    auto c = std::make_shared<Cache>(*this, id, dev, ino, std::move(memfd), static_cast<std::uint8_t*>(base), size,
                                     reserved);
    m_by_file[{dev, ino}] = c;
    m_by_id[id] = c;
    return c;
}

std::shared_ptr<Cache> CachePool::open(const store::Store& store, std::uint64_t min_size, std::string& why)
{
    if (!m_uffd) {
        why = m_unavailable;
        return nullptr;
    }
    const std::int64_t size = store.size();
    if (size < 0) {
        why = std::string("the store's size is unknown: ") + std::strerror(static_cast<int>(-size));
        return nullptr;
    }
    const auto id = store.identity();
    const auto key = std::make_pair(static_cast<dev_t>(id.a), static_cast<ino_t>(id.b));
    min_size = round_up(std::max<std::uint64_t>(min_size, static_cast<std::uint64_t>(size)), m_page);
    std::shared_ptr<Cache> c;
    {
        std::lock_guard lock(m_mutex);
        if (auto it = m_by_file.find(key); it != m_by_file.end()) c = it->second.lock();
        if (!c) {
            util::UniqueFd memfd(::memfd_create("pagerd-cache", MFD_CLOEXEC | MFD_ALLOW_SEALING));
            if (!memfd) {
                why = std::string("memfd_create failed: ") + std::strerror(errno);
                return nullptr;
            }
            if (min_size > k_max_file) {
                why = "the file is larger than the page cache takes (" + std::to_string(k_max_file >> 40) + " TiB)";
                return nullptr;
            }
            // Only the daemon may open it for writing: no other user can reopen a client's
            // read-only descriptor read-write through /proc. It spans its whole reservation
            // at once, and nobody can shrink it (the daemon's mapping would then SIGBUS),
            // grow it (a Shared client, which holds a read-write descriptor, could otherwise
            // make it larger than the daemon's mapping) or change the seals.
            const std::uint64_t reserved = reservation(min_size);
            if (::ftruncate(memfd.get(), static_cast<off_t>(reserved)) != 0 || ::fchmod(memfd.get(), 0400) != 0 ||
                ::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
                why = std::string("preparing the cache memfd failed: ") + std::strerror(errno);
                return nullptr;
            }
            c = make(std::move(memfd), key.first, key.second, min_size, reserved, why);
            if (c) spdlog::debug("cache {}: opened for {} {}:{}, {} bytes", c->id(), store.kind(), id.a, id.b, min_size);
            return c;
        }
    }
    if (!c->grow(min_size, why)) return nullptr;
    return c;
}

std::shared_ptr<Cache> CachePool::find(const store::Store& store)
{
    const auto id = store.identity();
    std::lock_guard lock(m_mutex);
    auto it = m_by_file.find({static_cast<dev_t>(id.a), static_cast<ino_t>(id.b)});
    return it != m_by_file.end() ? it->second.lock() : nullptr;
}

std::shared_ptr<Cache> CachePool::adopt(util::UniqueFd memfd, util::UniqueFd bits,
                                        std::shared_ptr<store::Store> write_store, const store::Store& store,
                                        std::string& why)
{
    if (!m_uffd) {
        why = m_unavailable;
        return nullptr;
    }
    struct stat mst{};
    if (::fstat(memfd.get(), &mst) != 0) {
        why = "fstat failed";
        return nullptr;
    }
    const auto id = store.identity();
    const auto key = std::make_pair(static_cast<dev_t>(id.a), static_cast<ino_t>(id.b));
    const int seals = ::fcntl(memfd.get(), F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK) || (::fcntl(memfd.get(), F_GETFL) & O_ACCMODE) != O_RDWR) {
        why = "the stored cache is not a read-write memfd sealed against shrinking";
        return nullptr;
    }
    std::shared_ptr<Cache> c;
    {
        std::lock_guard lock(m_mutex);
        if (auto it = m_by_file.find(key); it != m_by_file.end()) c = it->second.lock();
        if (c) {
            struct stat have{};
            ::fstat(c->memfd(), &have);
            if (have.st_ino != mst.st_ino || have.st_dev != mst.st_dev) {
                why = "another cache of the same file was restored first";
                return nullptr;
            }
            return c;
        }
        // A memfd sealed against growing spans its reservation (the file's size is asked
        // again); one an older daemon made spans the file, with 1 GiB more to grow into.
        const auto span = static_cast<std::uint64_t>(mst.st_size);
        const std::int64_t now = store.size();
        const std::uint64_t size =
            seals & F_SEAL_GROW ? std::min(round_up(static_cast<std::uint64_t>(std::max<std::int64_t>(now, 0)), m_page), span)
                                : span;
        c = make(std::move(memfd), key.first, key.second, size, seals & F_SEAL_GROW ? span : reservation(span), why);
        if (!c) return nullptr;
    }
    if (bits && !c->adopt_bits(std::move(bits), std::move(write_store), why)) return nullptr;
    admit(*c, c->adopt_present_pages(), false);  // held, not loaded by this daemon
    spdlog::info("cache {}: taken back from the descriptor store with {} page(s)", c->id(), c->resident_pages());
    return c;
}

void CachePool::loaded(Cache& c, const std::vector<std::uint64_t>& pages) { admit(c, pages, true); }

void CachePool::admit(Cache& c, const std::vector<std::uint64_t>& pages, bool count_loads)
{
    if (pages.empty()) return;
    {
        std::lock_guard lock(m_mutex);
        std::uint64_t refaults = 0;
        for (std::uint64_t p : pages) refaults += m_policy.on_load({c.id(), p});
        if (count_loads) {
            m_refaults.fetch_add(refaults, std::memory_order_relaxed);
            m_loads.fetch_add(pages.size(), std::memory_order_relaxed);
        }
        m_resident = m_policy.resident();
    }
    enforce_budget();
}

void CachePool::enforce_budget()
{
    std::vector<std::pair<std::shared_ptr<Cache>, std::uint64_t>> victims;
    {
        std::lock_guard lock(m_mutex);
        while (auto v = m_policy.next_victim()) {
            auto it = m_by_id.find(v->cache);
            if (auto c = it != m_by_id.end() ? it->second.lock() : nullptr) victims.emplace_back(std::move(c), v->page);
        }
        m_resident = m_policy.resident();
    }
    // Runs of pages of one cache go in one punch (a scan evicts what it loaded in order).
    std::sort(victims.begin(), victims.end(), [](const auto& a, const auto& b) {
        return a.first->id() != b.first->id() ? a.first->id() < b.first->id() : a.second < b.second;
    });
    std::uint64_t evicted = 0;
    std::vector<std::uint64_t> kept;
    for (std::size_t i = 0; i < victims.size();) {
        std::size_t j = i + 1;
        while (j < victims.size() && victims[j].first == victims[i].first && victims[j].second == victims[j - 1].second + 1)
            ++j;
        Cache& c = *victims[i].first;
        kept.clear();
        evicted += c.evict(victims[i].second, j - i, kept);
        if (!kept.empty()) {
            // Dirty: back to the policy (not counted as loads) until written back, which is
            // queued now, off the fault path. Until then the cache stays over its budget by
            // at most the pages Shared regions wrote.
            {
                std::lock_guard lock(m_mutex);
                for (std::uint64_t p : kept) m_policy.on_load({c.id(), p});
                m_resident = m_policy.resident();
            }
            if (c.writeback_useful()) request_writeback(victims[i].first);
        }
        i = j;
    }
    m_evictions.fetch_add(evicted, std::memory_order_relaxed);
    victims.clear();  // a cache whose last user went meanwhile closes here, outside the lock
}

void CachePool::request_writeback(const std::shared_ptr<Cache>& c)
{
    std::lock_guard hooks(m_queue_mutex);
    if (m_queue_writeback && c->want_writeback()) m_queue_writeback(c);
}

void CachePool::set_budget(std::uint64_t bytes)
{
    {
        std::lock_guard lock(m_mutex);
        m_budget = bytes;
        m_policy.set_budget(std::max<std::uint64_t>(bytes / m_page, 1));
    }
    enforce_budget();
}

void CachePool::set_min_probation(std::uint64_t bytes)
{
    std::lock_guard lock(m_mutex);
    m_policy.set_min_probation(bytes / m_page);
}

void CachePool::closed(Cache& c)
{
    std::lock_guard lock(m_mutex);
    m_reserved_total -= c.reserved();
    m_by_id.erase(c.id());
    if (auto it = m_by_file.find({c.dev(), c.ino()}); it != m_by_file.end()) {
        auto live = it->second.lock();
        if (!live) m_by_file.erase(it);  // (a newer cache of the same file stays)
    }
    m_policy.drop_cache(c.id());
    m_resident = m_policy.resident();
}

std::vector<std::shared_ptr<Cache>> CachePool::caches() const
{
    std::vector<std::shared_ptr<Cache>> live;
    std::lock_guard lock(m_mutex);
    for (const auto& [id, w] : m_by_id)
        if (auto c = w.lock()) live.push_back(std::move(c));
    return live;
}

CachePool::Figures CachePool::figures() const
{
    Figures f;
    f.budget = m_budget.load();
    f.bytes = m_resident.load() * m_page;
    {
        std::lock_guard lock(m_mutex);
        f.files = m_by_id.size();
    }
    f.loads = m_loads.load();
    f.hits = m_hits.load();
    f.evictions = m_evictions.load();
    f.refaults = m_refaults.load();
    f.writebacks = m_writebacks.load();
    std::vector<std::shared_ptr<Cache>> live;
    {
        std::lock_guard lock(m_mutex);
        for (const auto& [id, w] : m_by_id)
            if (auto c = w.lock()) live.push_back(std::move(c));
    }
    for (const auto& c : live) f.dirty_bytes += c->dirty_pages() * m_page;
    live.clear();  // (a cache whose last user went meanwhile closes here, outside the lock)
    return f;
}

std::vector<CachePool::FileFigures> CachePool::files() const
{
    std::vector<std::shared_ptr<Cache>> live;
    {
        std::lock_guard lock(m_mutex);
        for (const auto& [id, w] : m_by_id)
            if (auto c = w.lock()) live.push_back(std::move(c));
    }
    std::vector<FileFigures> out;
    for (const auto& c : live)
        out.push_back({c->dev(), c->ino(), c->size(), c->resident_pages() * m_page, c->dirty_pages() * m_page,
                       c.use_count() - 1});
    return out;
}

std::uint64_t CachePool::default_budget()
{
    std::uint64_t limit = 0;
    {
        std::ifstream in("/proc/meminfo");
        std::string key;
        std::uint64_t kb = 0;
        while (in >> key >> kb) {
            if (key == "MemTotal:") {
                limit = kb * 1024;
                break;
            }
            in.ignore(256, '\n');
        }
    }
    std::ifstream cg("/proc/self/cgroup");
    std::string line;
    while (std::getline(cg, line)) {
        const auto a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        std::uint64_t l = 0;
        if (controllers == "memory") l = read_number("/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes");
        else if (controllers.empty()) l = read_number("/sys/fs/cgroup" + path + "/memory.max");
        if (l && (limit == 0 || l < limit)) limit = l;
    }
    return round_up(std::max<std::uint64_t>(limit / 2, std::uint64_t{64} << 20), 4096);
}

}  // namespace pagerd::daemon
