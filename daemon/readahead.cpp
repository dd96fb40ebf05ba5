// Loads beyond the faulting page: read-ahead of sequential streams, ALL fills and PREFETCH
// requests. All of it goes through the same staging buffers as faults, and faults come
// first: read-ahead leaves a few buffers free for them, background prefetches a quarter.
#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "tracking/tracking.hpp"
#include "worker.hpp"

namespace pagerd::daemon {

Load* Worker::inflight_at(Client& c, std::uint64_t addr)
{
    auto it = c.inflight.upper_bound(addr);
    if (it == c.inflight.begin()) return nullptr;
    --it;
    return addr < it->first + it->second->len ? it->second : nullptr;
}

Load* Worker::new_load(Client& c, const Region& r, std::uint64_t addr, std::uint64_t len, Load::Kind kind)
{
    auto* l = new Load;
    l->op.load = l;
    l->kind = kind;
    l->client = &c;
    l->region_id = r.id;
    l->state = r.state;
    l->addr = addr;
    l->len = len;
    l->file_offset = r.file_offset + (addr - r.start);
    l->store = r.store;
    l->cache = r.cache;
    if (r.cache) l->cache_epoch = r.cache->load_epoch();
    l->slot = r.uffd_slot;
    const tracking::Strategy* t = tracking::of(r);
    l->write_protect = t && t->install_protected();
    l->buf = m_free_buffers.back();
    m_free_buffers.pop_back();
    c.inflight.emplace(addr, l);
    ++c.refs;
    return l;
}

std::pair<std::uint64_t, std::uint64_t> Worker::fault_range(Client& c, const Region& r, std::uint64_t page)
{
    const std::uint64_t block = m_ctx.config.fault_block_bytes;
    std::uint64_t from = r.start + (page - r.start) / block * block;
    std::uint64_t to = std::min(from + block, r.end());
    auto it = c.inflight.upper_bound(page);  // page itself is not in flight
    if (it != c.inflight.end() && it->first < to) to = it->first;
    if (it != c.inflight.begin()) {
        --it;
        from = std::max(from, it->first + it->second->len);
    }
    return {from, to};
}

void Worker::readahead(Client& c, const Region& r, std::uint64_t page, bool in_flight)
{
    const std::uint64_t max = m_ctx.config.readahead_max_bytes;
    if (max == 0) return;
    RegionState& st = *r.state;
    Stream* s = nullptr;
    for (Stream& x : st.streams)
        if (x.next && (x.marker == page || x.next == page)) s = &x;
    if (!s && in_flight) return;  // a thread waiting on a read-ahead already under way
    if (!s) {
        // Not the continuation of a stream: it may start one. The block this fault loads
        // is its first window; the oldest stream makes room.
        Stream* oldest = &st.streams[0];
        for (Stream& x : st.streams)
            if (x.used < oldest->used) oldest = &x;
        const auto [from, to] = fault_range(c, r, page);
        *oldest = Stream{to, 0, to - from, ++st.stream_clock};
        return;
    }
    const bool marker_hit = s->marker == page;
    s->used = ++st.stream_clock;
    s->marker = 0;
    // Grow fast while small (x4), then double, up to --readahead-max.
    s->window = std::min(max, s->window * (s->window * 4 <= max / 4 ? 4 : 2));
    const std::uint64_t from = s->next;
    const std::uint64_t to = std::min(r.end(), from + s->window);
    if (from >= to) return;  // the stream reached the end of the region
    // The next marker: the first page of this window when the client is still in the
    // previous one; halfway through it when the client is already here (it waits).
    const std::uint64_t half = (to - from) / 2 / m_ctx.page_size * m_ctx.page_size;
    const std::uint64_t marker = marker_hit ? from : (half ? from + half : 0);
    const unsigned reserve = std::max(1u, m_ctx.config.staging_buffers / 8);
    // The whole window to the block layer at once (deep queue), then the loads read it.
    // Not for a CACHE region whose cache holds the window's start already (another client
    // loaded it): that would bring back into the kernel's page cache what the daemon's
    // cache holds.
    if (!r.cache || !r.cache->loaded((r.file_offset + (from - r.start)) / m_ctx.page_size))
        r.store->will_need(r.file_offset + (from - r.start), to - from);
    const std::uint64_t stopped = load_range(c, r, from, to, Load::Kind::Readahead, nullptr, marker, reserve);
    s->next = stopped;
    s->marker = marker && marker < stopped && marker != page ? marker : 0;
}

std::uint64_t Worker::load_range(Client& c, const Region& r, std::uint64_t from, std::uint64_t to, Load::Kind kind,
                                 PrefetchJob* job, std::uint64_t marker, unsigned reserve)
{
    const std::uint64_t chunk = m_ctx.config.staging_buffer_bytes();
    std::uint64_t pos = from;
    while (pos < to) {
        if (Load* other = inflight_at(c, pos)) {  // being loaded already
            const std::uint64_t past = std::min(other->addr + other->len, to);
            if (job) job->state->prefetch_pending.fetch_sub(past - pos, std::memory_order_relaxed);
            if (job && other->job != job) {  // the job ends only once that load went in too
                other->also_jobs.push_back(job);
                ++job->inflight;
            }
            pos = past;
            continue;
        }
        if (m_free_buffers.size() <= reserve) break;
        std::uint64_t end = std::min(to, pos + chunk);
        if (auto it = c.inflight.upper_bound(pos); it != c.inflight.end() && it->first < end) end = it->first;
        Load* l = new_load(c, r, pos, end - pos, kind);
        if (marker >= pos && marker < end) l->skip = marker;
        if (job) {
            l->job = job;
            ++job->inflight;
        }
        start_read(*l);
        pos = end;
    }
    return std::min(pos, to);
}

void Worker::queue_prefetch(Client& c, const Region& r, std::uint64_t from, std::uint64_t to,
                            const std::shared_ptr<PrefetchWaiter>& waiter)
{
    if (waiter) {
        // A range an earlier prefetch of the region covers: wait for that one.
        for (PrefetchJob& j : c.jobs)
            if (j.region_id == r.id && j.start <= from && to <= j.end) {
                j.waiters.push_back(waiter);
                return;
            }
    }
    PrefetchJob j;
    j.region_id = r.id;
    j.state = r.state;
    j.start = j.next = from;
    j.end = to;
    if (waiter) j.waiters.push_back(waiter);
    r.state->prefetch_pending.fetch_add(to - from, std::memory_order_relaxed);
    c.jobs.push_back(std::move(j));
}

bool Worker::pump_prefetches()
{
    if (m_stopping || !m_waiting.empty()) return false;
    const unsigned reserve = std::max(2u, m_ctx.config.staging_buffers / 4);
    constexpr unsigned k_loads_per_turn = 8;  // 2 MiB: the most a fault waits behind a turn
    const std::uint64_t chunk = m_ctx.config.staging_buffer_bytes();
    std::vector<std::uint64_t> serials;
    for (const auto& [serial, c] : m_clients)
        if (!c->jobs.empty() && !c->closing) serials.push_back(serial);
    bool progress = true;
    unsigned started = 0;
    while (progress && m_free_buffers.size() > reserve && started < k_loads_per_turn) {
        progress = false;
        for (const std::uint64_t serial : serials) {  // one load per client per round
            auto found = m_clients.find(serial);
            if (found == m_clients.end()) continue;
            Client& c = *found->second;
            if (c.closing) continue;
            auto it = std::find_if(c.jobs.begin(), c.jobs.end(), [](const PrefetchJob& j) { return j.next < j.end; });
            if (it == c.jobs.end()) continue;
            PrefetchJob& j = *it;
            const Region* r = c.regions.find(j.next);
            if (!r || r->id != j.region_id) {
                // Unmapped, moved or split away: the rest of this job has nothing to load.
                j.state->prefetch_pending.fetch_sub(j.end - j.next, std::memory_order_relaxed);
                j.next = j.end;
            } else {
                const std::uint64_t to = std::min({j.end, r->end(), j.next + chunk});
                const std::uint64_t from = j.next;
                j.next = load_range(c, *r, from, to, Load::Kind::Prefetch, &j, 0, reserve);
                started += j.next > from;
            }
            progress = true;
            if (j.next >= j.end && j.inflight == 0) end_job(c, it);
        }
    }
    // More to do at once: loads remain to start and buffers are free (those of loads that
    // came from the page cache are free again once process_ready() installed them).
    return started > 0;
}

void Worker::end_job(Client& c, std::list<PrefetchJob>::iterator job)
{
    if (job->next < job->end) job->state->prefetch_pending.fetch_sub(job->end - job->next, std::memory_order_relaxed);
    for (const auto& w : job->waiters) {
        if (--w->remaining > 0) continue;
        send_reply(c, w->request_id, proto::Ok{});
        resume_requests(c);
    }
    c.jobs.erase(job);
}

void Worker::cancel_jobs(Client& c)
{
    for (auto it = c.jobs.begin(); it != c.jobs.end();) {
        auto here = it++;
        here->waiters.clear();
        if (here->next < here->end)
            here->state->prefetch_pending.fetch_sub(here->end - here->next, std::memory_order_relaxed);
        here->next = here->end;
        if (here->inflight == 0) c.jobs.erase(here);  // else its last load ends it
    }
}

void Worker::poll_for_faults()
{
    const auto window = std::chrono::microseconds(m_ctx.config.poll_us);
    auto until = Clock::now() + window;
    while (Clock::now() < until && !m_stop.load(std::memory_order_relaxed)) {
        io_uring_submit(&m_ring);
        if (io_uring_cq_ready(&m_ring)) break;  // completions first
        const auto reads = m_uffd_reads;
        for (const std::uint64_t serial : m_busy) {
            auto found = m_clients.find(serial);
            if (found == m_clients.end()) continue;
            Client& c = *found->second;
            for (unsigned slot = 0; slot < 2 && !c.closing; ++slot)
                if (c.uffds[slot].fd) read_uffd(c, slot, false);
        }
        process_ready();
        if (m_uffd_reads != reads) until = Clock::now() + window;
    }
    m_busy.clear();
}

}  // namespace pagerd::daemon
