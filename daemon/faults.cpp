// The fault path: read uffd messages, load blocks from the store through io_uring, install
// them with UFFDIO_COPY, and keep the region table true to the client's address space.
#include <spdlog/spdlog.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "pagerd/util/uffd.hpp"
#include "tracking/tracking.hpp"
#include "worker.hpp"

namespace pagerd::daemon {
namespace {

constexpr unsigned k_msgs_per_read = 64;
constexpr unsigned k_reads_per_wakeup = 16;
constexpr unsigned k_copy_retries = 64;

}  // namespace

void Worker::on_uffd_readable(Client& c, unsigned slot)
{
    for (unsigned i = 0; i < k_reads_per_wakeup && !c.closing; ++i)
        if (!read_uffd(c, slot, false)) return;
}

bool Worker::read_uffd(Client& c, unsigned slot, bool defer_faults)
{
    if (!c.uffds[slot].fd) return false;
    uffd_msg msgs[k_msgs_per_read];
    const ssize_t n = ::read(c.uffds[slot].fd.get(), msgs, sizeof msgs);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            close_client(c, std::string("reading the userfaultfd failed: ") + std::strerror(errno));
        return false;
    }
    const auto count = static_cast<std::size_t>(n) / sizeof(uffd_msg);
    if (count) ++m_uffd_reads;
    for (std::size_t i = 0; i < count && !c.closing; ++i) on_uffd_message(c, slot, msgs[i], defer_faults);
    return count == k_msgs_per_read;
}

void Worker::on_uffd_message(Client& c, unsigned slot, const uffd_msg& msg, bool defer_faults)
{
    const std::uint64_t page_mask = ~std::uint64_t{m_ctx.page_size - 1};
    switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT: {
        const auto flags = msg.arg.pagefault.flags;
        Fault f{msg.arg.pagefault.address & page_mask, Clock::now(), (flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0, slot,
                (flags & UFFD_PAGEFAULT_FLAG_MINOR) != 0};
        m_fault_seen = true;
        if (m_ctx.config.poll_us && m_busy.size() < 16 &&
            std::find(m_busy.begin(), m_busy.end(), c.serial) == m_busy.end())
            m_busy.push_back(c.serial);
        if (flags & UFFD_PAGEFAULT_FLAG_WP)
            handle_write_protect_fault(c, f);  // never waits for I/O: no need to defer
        else if (defer_faults)
            c.deferred.push_back(f);
        else
            handle_fault(c, f);
        return;
    }
    case UFFD_EVENT_UNMAP: {
        const auto start = msg.arg.remove.start, len = msg.arg.remove.end - msg.arg.remove.start;
        // munmap behind the library's back: what its tracking recorded is written back.
        auto pieces = change_table(c, [&](RegionTable& t) { return t.remove_range(start, len); });
        for (const Region& r : pieces) {
            bool left = false;
            c.regions.for_each([&](const Region& other) { left = left || other.id == r.id; });
            if (!left) fdstore::forget_region(c, r.id);
        }
        forget(c, std::move(pieces), "munmap");
        // Threads blocked on the vanished range retry and get what munmap'ed memory gives.
        util::uffd_wake(c.uffds[slot].fd.get(), start, len);
        spdlog::debug("client {}: munmap of {} bytes at {:#x}", c.serial, len, start);
        return;
    }
    case UFFD_EVENT_REMOVE:
        // MADV_DONTNEED / MADV_REMOVE: the pages fault again and are loaded again.
        spdlog::debug("client {}: madvise removed [{:#x}, {:#x})", c.serial, msg.arg.remove.start,
                      msg.arg.remove.end);
        return;
    case UFFD_EVENT_REMAP: {
        change_table(c, [&](RegionTable& t) {
            t.move_range(msg.arg.remap.from, msg.arg.remap.to, msg.arg.remap.len);
            return 0;
        });
        spdlog::debug("client {}: mremap {:#x} -> {:#x} ({} bytes)", c.serial, msg.arg.remap.from,
                      msg.arg.remap.to, msg.arg.remap.len);
        return;
    }
    case UFFD_EVENT_FORK:
        // Reading the event put the child's userfaultfd in our descriptor table; the
        // parent's fork() returns once it is read.
        on_fork(c, slot, util::UniqueFd(static_cast<int>(msg.arg.fork.ufd)));
        return;
    default:
        spdlog::warn("client {}: unexpected userfaultfd event {}", c.serial, msg.event);
        return;
    }
}

void Worker::drain_events(Client& c)
{
    for (unsigned slot = 0; slot < 2; ++slot)
        while (!c.closing && read_uffd(c, slot, true)) {
        }
    std::vector<Fault> deferred;
    deferred.swap(c.deferred);
    for (const Fault& f : deferred)
        if (!c.closing) handle_fault(c, f);
}

void Worker::handle_fault(Client& c, Fault f)
{
    if (m_stopping) return;  // left waiting: see stop_client_when_idle
    if (f.minor) return handle_minor_fault(c, f);
    const Region* r = c.regions.find(f.page);
    if (!r || r->uffd_slot != f.slot) {
        signal_unservable(c, f.slot, f.page);
        return;
    }
    if (r->state->prefetch != proto::Prefetch::NONE) readahead(c, *r, f.page, inflight_at(c, f.page) != nullptr);
    if (Load* l = inflight_at(c, f.page)) {
        if (l->skip == f.page) l->skip = 0;  // a marker page someone waits for goes in too
        l->faults.push_back(f);  // the load in flight wakes this thread too
        return;
    }
    if (m_free_buffers.empty()) {
        m_waiting.emplace_back(&c, f);
        ++c.refs;
        return;
    }
    const auto [from, to] = fault_range(c, *r, f.page);
    Load* l = new_load(c, *r, from, to - from, Load::Kind::Fault);
    l->faults.push_back(f);
    start_read(*l);
}

// A CACHE region's page that the cache holds but the client has not mapped: mapped from
// the cache with the cached pages after it (up to a read-ahead window), no load.
void Worker::handle_minor_fault(Client& c, const Fault& f)
{
    if (m_stopping) return;  // left waiting: see stop_client_when_idle
    const Region* r = c.regions.find(f.page);
    if (!r || r->uffd_slot != f.slot || !r->cache) {
        signal_unservable(c, f.slot, f.page);
        return;
    }
    if (r->state->prefetch != proto::Prefetch::NONE) readahead(c, *r, f.page, inflight_at(c, f.page) != nullptr);
    const std::uint64_t offset = r->file_offset + (f.page - r->start);
    // An `all` region maps everything the cache holds from here on at once: after its fill,
    // one fault, and touches run at the speed of mapped memory.
    // Others: the fault block, as a load would (a stream's read-ahead, started above, maps
    // the cached windows ahead of it).
    const std::uint64_t window = r->state->prefetch == proto::Prefetch::ALL
                                     ? r->end() - f.page
                                     : std::max<std::uint64_t>(m_ctx.config.fault_block_bytes, m_ctx.page_size);
    int err = 0;
    std::uint64_t fresh = 0;
    // A Shared view maps the pages write-protected: the first write to each is recorded.
    const std::uint64_t mapped = r->cache->map_into(c.uffds[f.slot].fd.get(), f.page, offset,
                                                    std::min(window, r->end() - f.page), err, fresh, r->shared());
    if (mapped == 0) {
        // The daemon did not load that page (a client made it through a mapping it did
        // not register, or it is being evicted): nobody sees it; it is loaded properly.
        if (err == 0 || err == EFAULT) {
            r->cache->drop_foreign(offset / m_ctx.page_size);
            handle_fault(c, Fault{f.page, f.t0, f.write, f.slot, false});
        } else {
            util::uffd_wake(c.uffds[f.slot].fd.get(), f.page, m_ctx.page_size);  // faults again
        }
        return;
    }
    // Counted before the wake: a woken thread that asks for the status sees its fault.
    m_ctx.cache->count_hits(fresh / m_ctx.page_size);
    const auto ns = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - f.t0).count());
    m_stats.latency.record(ns);
    r->state->latency.record(ns);
    m_stats.faults.fetch_add(1, std::memory_order_relaxed);
    r->state->faults.fetch_add(1, std::memory_order_relaxed);
    // A write: dirty and writable now, rather than a second fault for the protection
    // (unless writers must wait: it faults again on the protection, and waits there).
    if (f.write && r->shared() && !throttled_write(c, *r, f.page)) mark_written(c, *r, f.page);
    // Every thread waiting in what was mapped (the mapping woke nobody; a page mapped
    // meanwhile by another way, EEXIST, is included).
    util::uffd_wake(c.uffds[f.slot].fd.get(), f.page, std::max<std::uint64_t>(mapped, m_ctx.page_size));
}

void Worker::start_read(Load& l)
{
    // A CACHE region's block that the cache holds whole (another client loaded it): no
    // read; install() maps it from the cache.
    if (l.cache) {
        bool all = true;
        for (std::uint64_t o = 0; all && o < l.len; o += m_ctx.page_size)
            all = l.cache->loaded((l.file_offset + o) / m_ctx.page_size);
        if (all) {
            l.done = l.len;
            l.from_cache = true;
            m_ready.push_back(&l);
            return;
        }
    }
    // What the store has at once (a file's page cache) goes in without a trip through the ring.
    const ssize_t n = l.store->read_now(l.buf, l.len, l.file_offset);
    if (n >= 0) {
        l.done = static_cast<std::uint64_t>(n);
        m_stats.bytes_read.fetch_add(l.done, std::memory_order_relaxed);
        if (n == 0 || l.done == l.len) {  // all of it, or the end of the file
            m_ready.push_back(&l);
            return;
        }
    }
    submit_read(l);  // the rest (or all) through io_uring
}

void Worker::process_ready()
{
    while (!m_ready.empty()) {
        std::vector<Load*> ready;
        ready.swap(m_ready);
        for (Load* l : ready) {
            Client& c = *l->client;
            if (!c.closing) install(c, *l);
            finish_load(l);
        }
    }
}

void Worker::submit_read(Load& l)
{
    // A remote store: through this worker's channel of it, which completes like the ring.
    if (store::Channel* ch = channel_for(l.store)) {
        ch->read(l.buf + l.done, static_cast<unsigned>(l.len - l.done), l.file_offset + l.done, &l.op);
        return;
    }
    io_uring_sqe* s = sqe();
    l.store->prep_read(s, l.buf + l.done, static_cast<unsigned>(l.len - l.done), l.file_offset + l.done,
                       m_fixed_buffers, l.kind != Load::Kind::Fault);
    io_uring_sqe_set_data(s, &l.op);
}

void Worker::on_read_done(Load& l, int res)
{
    Client& c = *l.client;
    if (c.closing) return finish_load(&l);
    if (res == -EINTR || res == -EAGAIN) return submit_read(l);
    if (res < 0) {
        spdlog::warn("client {}: reading {} bytes at file offset {} failed: {}; the faulting "
                     "threads get SIGBUS", c.serial, l.len, l.file_offset + l.done, std::strerror(-res));
        for (const Fault& f : l.faults) signal_unservable(c, l.slot, f.page);
        return finish_load(&l);
    }
    l.done += static_cast<std::uint64_t>(res);
    m_stats.bytes_read.fetch_add(static_cast<std::uint64_t>(res), std::memory_order_relaxed);
    if (res > 0 && l.done < l.len) return submit_read(l);  // short read before EOF: go on
    install(c, l);
    finish_load(&l);
}

void Worker::install(Client& c, Load& l)
{
    const std::uint64_t page = m_ctx.page_size;
    // Like mmap: the tail of the last partial page reads as zeros; whole pages past the
    // end of the file are not installed, and a thread faulting there gets SIGBUS.
    const std::uint64_t valid = std::min((l.done + page - 1) / page * page, l.len);
    std::memset(l.buf + l.done, 0, valid - l.done);
    std::uint64_t installed = 0;
    if (l.cache) {
        installed = install_cached(c, l, valid);
    } else if (valid > 0 && still_backs(c, l, l.addr)) {
        // A stream's marker page stays out: the fault there says the client got this far.
        const std::uint64_t skip = l.skip ? l.skip - l.addr : valid;
        installed = copy_in(c, l, 0, std::min(skip, valid));
        if (skip + page < valid && !c.closing) installed += copy_in(c, l, skip + page, valid);
    }
    if (c.closing) return;
    const auto now = Clock::now();
    for (const Fault& f : l.faults) {
        if (f.page >= l.addr + valid && still_backs(c, l, f.page)) {
            signal_unservable(c, l.slot, f.page);
        } else if (f.write && l.write_protect && !c.closing) {
            // A first touch that is a write: the page goes in write-protected with the
            // block, then is dirty and writable at once.
            if (const Region* r = c.regions.find(f.page);
                r && r->tracking == proto::Tracking::UFFD_WP && !throttled_write(c, *r, f.page))
                mark_written(c, *r, f.page);
        }
        const auto ns = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(now - f.t0).count());
        m_stats.latency.record(ns);
        l.state->latency.record(ns);
    }
    // Counted before the wake: a woken thread that asks for the status sees its fault.
    m_stats.faults.fetch_add(l.faults.size(), std::memory_order_relaxed);
    l.state->faults.fetch_add(l.faults.size(), std::memory_order_relaxed);
    m_stats.pages_installed.fetch_add(installed / page, std::memory_order_relaxed);
    if (l.kind != Load::Kind::Fault)
        m_stats.pages_prefetched.fetch_add(installed / page, std::memory_order_relaxed);
    util::uffd_wake(c.uffds[l.slot].fd.get(), l.addr, l.len);
}

// A CACHE region's load: into the cache (pages loaded already stay), then mapped into the
// client with UFFDIO_CONTINUE (not the marker page: its MINOR fault continues the stream).
// Returns the bytes mapped. The kernel's page cache copy of the bytes is dropped: the
// daemon's cache holds them now.
std::uint64_t Worker::install_cached(Client& c, Load& l, std::uint64_t valid)
{
    const std::uint64_t page = m_ctx.page_size;
    std::vector<std::uint64_t> added, failed;
    if (!l.from_cache && valid > 0) {
        added = l.cache->fill(l.file_offset, l.buf, valid, l.cache_epoch, failed);
        l.store->loaded(l.file_offset, valid);
        // A fault whose page could not be put in (the daemon's memory cgroup is full, ...)
        // gets SIGBUS rather than a loop of loads that fail the same way. Any other page
        // not mapped below (stale, or evicted by another worker meanwhile) is only woken:
        // it faults and loads again.
        for (const Fault& f : l.faults)
            if (f.page < l.addr + valid &&
                std::find(failed.begin(), failed.end(), (l.file_offset + (f.page - l.addr)) / page) != failed.end() &&
                still_backs(c, l, f.page)) {
                spdlog::warn("client {}: page at file offset {} could not be put into the cache; SIGBUS",
                             c.serial, l.file_offset + (f.page - l.addr));
                signal_unservable(c, l.slot, f.page);
            }
    }
    // Told to the eviction policy only once mapped: a page not yet admitted cannot be
    // chosen for eviction between the fill and the mapping.
    struct Admit {
        CachePool& pool;
        Cache& cache;
        std::vector<std::uint64_t>& pages;
        ~Admit() { pool.loaded(cache, pages); }
    } admit{*m_ctx.cache, *l.cache, added};
    if (valid == 0 || !still_backs(c, l, l.addr)) return 0;
    const int uffd = c.uffds[l.slot].fd.get();
    const std::uint64_t skip = l.skip ? l.skip - l.addr : valid;
    int err = 0;
    std::uint64_t fresh = 0, more = 0;
    std::uint64_t mapped =
        l.cache->map_into(uffd, l.addr, l.file_offset, std::min(skip, valid), err, fresh, l.write_protect);
    if (skip + page < valid)
        mapped += l.cache->map_into(uffd, l.addr + skip + page, l.file_offset + skip + page, valid - skip - page,
                                    err, more, l.write_protect);
    if (l.from_cache) m_ctx.cache->count_hits((fresh + more) / page);
    if (mapped + (l.skip ? page : 0) < valid)
        spdlog::debug("client {}: mapped {} of {} bytes at {:#x} from the cache ({})", c.serial, mapped, valid, l.addr,
                      std::strerror(err));
    return mapped;
}

// True while `addr` still belongs to the region piece the load was read for.
bool Worker::still_backs(Client& c, const Load& l, std::uint64_t addr)
{
    const Region* r = c.regions.find(addr);
    return r && r->id == l.region_id && r->store.get() == l.store.get() &&
           r->file_offset + (addr - r->start) == l.file_offset + (addr - l.addr);
}

// UFFDIO_COPY of bytes [from, len) of the load; returns the bytes this call installed.
// One ioctl for the whole run; page by page once the run turns out to span several
// mappings (the client, or its SIGSEGV tracker, mprotect'ed part of the region).
std::uint64_t Worker::copy_in(Client& c, Load& l, std::uint64_t from, std::uint64_t len)
{
    const std::uint64_t page = m_ctx.page_size;
    std::uint64_t off = from, installed = 0;
    unsigned retries = 0;
    bool page_by_page = false;
    while (off < len && !c.closing) {
        uffdio_copy cp{};
        cp.dst = l.addr + off;
        cp.src = reinterpret_cast<std::uint64_t>(l.buf + off);
        cp.len = page_by_page ? page : len - off;
        cp.mode = UFFDIO_COPY_MODE_DONTWAKE | (l.write_protect ? UFFDIO_COPY_MODE_WP : 0);
        if (::ioctl(c.uffds[l.slot].fd.get(), UFFDIO_COPY, &cp) == 0) {
            installed += cp.len;
            off += cp.len;
            continue;
        }
        const int err = errno;
        if (cp.copy > 0) {  // partial copy: go on after what was installed
            off += static_cast<std::uint64_t>(cp.copy);
            installed += static_cast<std::uint64_t>(cp.copy);
            continue;
        }
        if (err == EEXIST) {  // already there (racing copy, or written by the client)
            off += page;
        } else if (err == EAGAIN && ++retries < k_copy_retries) {
            // The address space is changing: take the pending events, then retry if the
            // range still belongs to this load.
            while (!c.closing && read_uffd(c, l.slot, true)) {
            }
            if (!still_backs(c, l, l.addr + off)) break;
        } else if (err == ESRCH) {
            close_client(c, "client address space is gone");
        } else if (err == ENOENT && !page_by_page && len - off > page) {
            page_by_page = true;  // the range crosses mappings: one page at a time
        } else if (err == ENOENT) {
            off += page;  // this page is no longer mapped: its unmap event follows
        } else {
            spdlog::warn("client {}: UFFDIO_COPY at {:#x} failed: {}", c.serial, l.addr + off, std::strerror(err));
            break;
        }
    }
    return installed;
}

void Worker::signal_unservable(Client& c, unsigned slot, std::uint64_t page)
{
    const auto& u = c.uffds[slot];
    if (!(u.features & UFFD_FEATURE_POISON)) {
        close_client(c, "a fault could not be served and this userfaultfd cannot raise SIGBUS");
        return;
    }
    const int err = util::uffd_poison(u.fd.get(), page, m_ctx.page_size);
    if (err == 0) {
        m_stats.sigbus_faults.fetch_add(1, std::memory_order_relaxed);
    } else {
        util::uffd_wake(u.fd.get(), page, m_ctx.page_size);  // not mapped (ENOENT) or present
    }
}

// A first write to a clean page of the page cache while the dirty pages of all caches are
// over their limit: it waits (the thread stays blocked in its fault) until write-back
// brings them under it, as the kernel's balance_dirty_pages holds up writers.
bool Worker::throttled_write(Client& c, const Region& r, std::uint64_t page)
{
    // A page that waited its second goes through (for a second more): evicted while it
    // waited, it would otherwise make its writer wait again, and again.
    if (!r.cache || !r.shared() || (page == c.unthrottled_page && Clock::now() < c.unthrottled_until) ||
        !m_ctx.cache->writers_must_wait(r.cache->unstuck_dirty_pages()))
        return false;
    m_ctx.cache->request_writeback(r.cache);
    return true;
}

void Worker::replay_throttled(bool all)
{
    if (m_throttled.empty()) return;
    const auto waited = Clock::now() - m_throttled.front().fault.t0;
    // At most a second: write-back is slow or stuck, the writer goes on (over the limit).
    if (!all && m_ctx.cache->dirty_over_limit() && waited < std::chrono::seconds(1)) return;
    std::vector<Throttled> now;
    now.swap(m_throttled);
    for (const Throttled& t : now) {
        auto it = m_clients.find(t.client);
        if (it == m_clients.end() || it->second->closing) continue;
        Client& c = *it->second;
        if (all) {  // the next daemon (or nobody) serves it: the writer faults again
            util::uffd_wake(c.uffds[t.fault.slot].fd.get(), t.fault.page, m_ctx.page_size);
            continue;
        }
        c.unthrottled_page = t.fault.page;
        c.unthrottled_until = Clock::now() + std::chrono::seconds(1);
        handle_write_protect_fault(c, t.fault, false);
    }
}

// The first write to a write-protected page of a Shared region the daemon tracks.
void Worker::handle_write_protect_fault(Client& c, const Fault& f, bool may_throttle)
{
    const Region* r = c.regions.find(f.page);
    const tracking::Strategy* t = r && r->uffd_slot == f.slot ? tracking::of(*r) : nullptr;
    const int uffd = c.uffds[f.slot].fd.get();
    if (t && may_throttle && throttled_write(c, *r, f.page)) {
        m_throttled.push_back({c.serial, f});
        return;
    }
    if (t && t->written(uffd, *r, f.page, m_ctx.page_size)) {
        m_stats.faults.fetch_add(1, std::memory_order_relaxed);
        m_stats.latency.record(static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - f.t0).count()));
        return;
    }
    // Not ours to track (the region is gone): let the write through rather than loop.
    if (!t) tracking::unprotect(uffd, f.page, m_ctx.page_size);
}

// A first write the daemon tracks: recorded, then the page is writable (its strategy).
void Worker::mark_written(Client& c, const Region& r, std::uint64_t page)
{
    if (const tracking::Strategy* t = tracking::of(r))
        t->written(c.uffds[r.uffd_slot].fd.get(), r, page, m_ctx.page_size);
}

void Worker::finish_load(Load* l)
{
    Client& c = *l->client;
    if (auto it = c.inflight.find(l->addr); it != c.inflight.end() && it->second == l) c.inflight.erase(it);
    m_free_buffers.push_back(l->buf);
    if (PrefetchJob* job = l->job) {
        l->state->prefetch_pending.fetch_sub(l->len, std::memory_order_relaxed);
        l->also_jobs.push_back(job);  // its own job ends like the others that waited for it
    }
    for (PrefetchJob* job : l->also_jobs) {
        --job->inflight;
        if (job->next >= job->end && job->inflight == 0)
            for (auto it = c.jobs.begin(); it != c.jobs.end(); ++it)
                if (&*it == job) {
                    end_job(c, it);
                    break;
                }
    }
    delete l;
    std::vector<Fault> deferred;
    deferred.swap(c.deferred);
    for (const Fault& f : deferred)
        if (!c.closing) handle_fault(c, f);
    if (m_stopping) stop_client_when_idle(c);
    release(c);
    run_waiting();
}

void Worker::run_waiting()
{
    while (!m_free_buffers.empty() && !m_waiting.empty()) {
        auto [c, f] = m_waiting.front();
        m_waiting.pop_front();
        if (!c->closing) handle_fault(*c, f);
        release(*c);
    }
}

}  // namespace pagerd::daemon
