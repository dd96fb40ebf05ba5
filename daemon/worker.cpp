#include "worker.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "pagerd/util/uffd.hpp"
#include "tracking/tracking.hpp"
#include "writeback.hpp"

namespace pagerd::daemon {

Worker::Worker(Context& ctx, unsigned index) : m_ctx(ctx), m_index(index)
{
    if (int r = io_uring_queue_init(256, &m_ring, 0); r < 0)
        throw std::runtime_error(std::string("io_uring_queue_init: ") + std::strerror(-r));
    m_inbox_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!m_inbox_fd) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    m_opened->wake.reset(::fcntl(m_inbox_fd.get(), F_DUPFD_CLOEXEC, 0));
    const auto block = ctx.config.staging_buffer_bytes();
    m_buffers_bytes = block * ctx.config.staging_buffers;
    void* mem = ::mmap(nullptr, m_buffers_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("cannot allocate staging buffers");
    m_buffers = static_cast<std::uint8_t*>(mem);
    for (unsigned i = 0; i < ctx.config.staging_buffers; ++i)
        m_free_buffers.push_back(m_buffers + i * block);
    const iovec all{m_buffers, m_buffers_bytes};
    if (int r = io_uring_register_buffers(&m_ring, &all, 1); r == 0)
        m_fixed_buffers = true;
    else  // RLIMIT_MEMLOCK too low for them, most likely: plain reads work as well
        spdlog::debug("worker {}: staging buffers not registered with io_uring: {}", index, std::strerror(-r));
    m_writer = std::make_unique<Writer>(ctx.page_size, index, [this] {
        const std::uint64_t one = 1;
        (void)!::write(m_inbox_fd.get(), &one, sizeof one);
    });
}

Worker::~Worker()
{
    join();
    io_uring_queue_exit(&m_ring);
    for (auto& [w, op] : m_watch_ops) delete op;  // polls the ring dropped with it
    if (m_buffers) ::munmap(m_buffers, m_buffers_bytes);
}

void Worker::start()
{
    m_thread = std::thread([this] { run(); });
    const std::string name = "pagerd-w" + std::to_string(m_index);
    pthread_setname_np(m_thread.native_handle(), name.c_str());
    if (m_ctx.config.pin_workers) {
        const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(static_cast<int>(m_index % static_cast<unsigned>(cpus > 0 ? cpus : 1)), &set);
        if (int err = pthread_setaffinity_np(m_thread.native_handle(), sizeof set, &set))
            spdlog::warn("worker {}: cannot pin to a CPU: {}", m_index, std::strerror(err));
    }
}

void Worker::stop(bool detach)
{
    m_detach.store(detach);
    m_stop.store(true);
    const std::uint64_t one = 1;
    (void)!::write(m_inbox_fd.get(), &one, sizeof one);
}

void Worker::join()
{
    if (m_thread.joinable()) m_thread.join();
}

void Worker::adopt(util::UniqueFd sock, const ucred& peer)
{
    auto c = std::make_unique<Client>();
    c->serial = m_ctx.next_client_serial.fetch_add(1);
    c->peer = peer;
    c->sock = std::move(sock);
    adopt(std::move(c));
}

void Worker::adopt(std::unique_ptr<Client> c)
{
    {
        std::lock_guard lock(m_inbox_mutex);
        m_inbox.push_back(std::move(c));
    }
    const std::uint64_t one = 1;
    (void)!::write(m_inbox_fd.get(), &one, sizeof one);
}

io_uring_sqe* Worker::sqe()
{
    io_uring_sqe* s = io_uring_get_sqe(&m_ring);
    while (!s) {
        io_uring_submit(&m_ring);
        s = io_uring_get_sqe(&m_ring);
    }
    return s;
}

void Worker::arm_poll(Client& c, Op& op, int fd)
{
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_add(s, fd, POLLIN | POLLRDHUP);
    io_uring_sqe_set_data(s, &op);
    op.armed = true;
    ++c.refs;
}

void Worker::run()
{
    {
        io_uring_sqe* s = sqe();
        io_uring_prep_poll_add(s, m_inbox_fd.get(), POLLIN);
        io_uring_sqe_set_data(s, &m_inbox_op);
    }
    struct Done {
        Op* op;
        int res;
    };
    std::vector<Done> done;
    bool more = false;  // background prefetches could go on at once: do not sleep
    while (!(m_stopping && m_clients.empty())) {
        m_last_turn.store(Clock::now().time_since_epoch().count());
        __kernel_timespec tick{0, 200 * 1000 * 1000};
        io_uring_cqe* cqe = nullptr;
        const int r = more ? io_uring_submit_and_get_events(&m_ring)
                           : io_uring_submit_and_wait_timeout(&m_ring, &cqe, 1, &tick, nullptr);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY)
            spdlog::error("worker {}: io_uring wait failed: {}", m_index, std::strerror(-r));
        done.clear();
        unsigned head, n = 0;
        io_uring_for_each_cqe(&m_ring, head, cqe)
        {
            done.push_back({static_cast<Op*>(io_uring_cqe_get_data(cqe)), cqe->res});
            ++n;
        }
        io_uring_cq_advance(&m_ring, n);
        for (const auto& d : done)
            if (d.op) handle_completion(d.op, d.res);
        run_store_completions();
        // Faults first: a turn gives background prefetches one slice, then looks at the
        // userfaultfds and sockets again (at once, without sleeping, while more is due).
        process_ready();
        more = pump_prefetches();
        process_ready();
        if (m_fault_seen && m_ctx.config.poll_us) poll_for_faults();
        m_fault_seen = false;
        check_deadlines();
        for (const auto& job : m_writer->take_done()) on_written(*job);
        close_doomed();
        run_store_completions();
        if (!m_ready.empty()) more = true;
    }
    // Every write-back queued (clients that died or were closed at the stop) reaches its
    // file before the worker ends.
    m_writer->finish();
    for (const auto& job : m_writer->take_done()) on_written(*job);
    spdlog::debug("worker {} stopped", m_index);
}

void Worker::handle_completion(Op* op, int res)
{
    switch (op->kind) {
    case Op::Kind::Inbox: {
        std::uint64_t v;
        (void)!::read(m_inbox_fd.get(), &v, sizeof v);
        take_inbox();
        tick_channels(Clock::now(), false);  // a connection made by another thread, maybe
        {
            std::vector<Opened> opened;
            {
                std::lock_guard lock(m_opened->mutex);
                opened.swap(m_opened->done);
            }
            for (auto& o : opened) store_opened(o);
        }
        if (m_stop.load() && !m_stopping) {
            m_stopping = true;
            replay_throttled(true);  // woken: each writer faults again, to this daemon or the next
            const bool detach = m_detach.load();
            (void)detach;
            for (auto it = m_clients.begin(); it != m_clients.end();) {
                Client& c = *(it++)->second;  // closing may erase c
                stop_client_when_idle(c);
            }
        }
        io_uring_sqe* s = sqe();  // kept armed while stopping: write-back results wake the loop
        io_uring_prep_poll_add(s, m_inbox_fd.get(), POLLIN);
        io_uring_sqe_set_data(s, &m_inbox_op);
        return;
    }
    case Op::Kind::SockPoll:
    case Op::Kind::UffdPoll: {
        Client& c = *op->client;
        op->armed = false;
        const bool sock = op->kind == Op::Kind::SockPoll;
        if (!c.closing) {
            if (res < 0) {
                close_client(c, std::string("poll failed: ") + std::strerror(-res));
            } else if (sock) {
                on_socket_readable(c);
            } else if (res & (POLLERR | POLLHUP)) {
                close_client(c, "userfaultfd reported an error");
            } else {
                on_uffd_readable(c, op->slot);
            }
            if (!c.closing && !(sock && c.paused)) arm_poll(c, *op, sock ? c.sock.get() : c.uffds[op->slot].fd.get());
        }
        release(c);
        return;
    }
    case Op::Kind::Read:
        on_read_done(*op->load, res);
        return;
    case Op::Kind::StorePoll: {
        store::Watch* w = op->watch;
        m_watch_ops.erase(w);
        delete op;
        w->armed = false;
        w->ready(res);
        return;
    }
    }
}

void Worker::take_inbox()
{
    std::vector<std::unique_ptr<Client>> fresh;
    {
        std::lock_guard lock(m_inbox_mutex);
        fresh.swap(m_inbox);
    }
    for (auto& c : fresh) {
        c->hello_deadline = Clock::now() + std::chrono::milliseconds(m_ctx.limits.hello_timeout_ms.load());
        c->sock_op.client = c.get();
        for (unsigned slot = 0; slot < 2; ++slot) {
            c->uffds[slot].op.client = c.get();
            c->uffds[slot].op.slot = slot;
        }
        if (c->restored)
            spdlog::info("client {} (pid {}) resumed on worker {}", c->serial, c->peer.pid, m_index);
        else
            spdlog::info("client {} connected (pid {}, uid {}) on worker {}", c->serial, c->peer.pid, c->peer.uid,
                         m_index);
        Client* added = enlist(std::move(c));
        if (!added) continue;
        Client& ref = *added;
        if (ref.restored) {
            // ALL regions fill again (pages already there are skipped); then faults the
            // previous daemon read but never answered: wake their threads so that they
            // fault again and are served here.
            ref.regions.for_each([&](const Region& r) {
                if (r.state->prefetch == proto::Prefetch::ALL) queue_prefetch(ref, r, r.start, r.end(), nullptr);
            });
            ref.regions.for_each([&](const Region& r) { util::uffd_wake(ref.uffds[r.uffd_slot].fd.get(), r.start, r.length); });
        }
    }
}

Client* Worker::enlist(std::unique_ptr<Client> c)
{
    m_stats.clients.fetch_add(1, std::memory_order_relaxed);
    m_stats.regions.fetch_add(c->regions.count(), std::memory_order_relaxed);
    m_stats.mapped_bytes.fetch_add(c->regions.bytes(), std::memory_order_relaxed);
    if (c->uffd_flags & proto::k_uffd_user_mode_only)
        m_stats.user_mode_only_clients.fetch_add(1, std::memory_order_relaxed);
    Client& ref = *c;
    {
        std::lock_guard lock(m_table_mutex);
        m_clients.emplace(ref.serial, std::move(c));
    }
    if (m_stopping) {
        close_client(ref, "daemon stopping");  // may free it
        return nullptr;
    }
    if (ref.sock) arm_poll(ref, ref.sock_op, ref.sock.get());
    for (auto& u : ref.uffds)
        if (u.fd) arm_poll(ref, u.op, u.fd.get());
    return &ref;
}

// Faults in flight finish first: the threads waiting on them get their data. Faults that
// come after the stop are left waiting (for the next daemon, or for the library's SIGBUS).
void Worker::stop_client_when_idle(Client& c)
{
    if (c.closing || !c.inflight.empty() || c.flush_pending) return;  // finish_load, on_written call again
    // A forked child is not kept at a stop: systemd may be stopping the service for good,
    // and would then close the stored copy of its userfaultfd, leaving its unloaded pages
    // to read as zeros. Closed here, they raise SIGBUS (poison_unloaded). One the daemon
    // did not close (SIGKILL, a crash) stays in the store for the next daemon.
    if (m_detach.load() && !c.forked_from)
        detach_client(c);
    else
        close_client(c, "daemon stopping");
}

// The daemon restarts: write back what is dirty, keep the client's state and descriptors
// in the store for the next daemon, and let go of it here without telling anyone.
void Worker::detach_client(Client& c)
{
    // Shared regions' own memfds are written back now. The page cache's dirty set is not:
    // it goes into the descriptor store with the cache, and the next daemon writes it
    // (written now, a page would be protected again only in the views still in a table:
    // this client's, leaving the table, would stay writable and untracked).
    std::vector<Region> all;
    c.regions.for_each([&](const Region& r) {
        if (!r.cache) all.push_back(r);
    });
    forget(c, std::move(all), "daemon restarting");
    // The next daemon knows nothing of a WAIT prefetch in progress: answer it now rather
    // than leave the client waiting for a reply that would never come.
    std::set<PrefetchWaiter*> answered;
    for (PrefetchJob& j : c.jobs)
        for (const auto& w : j.waiters)
            if (answered.insert(w.get()).second)
                send_reply(c, w->request_id, proto::ErrorReply{proto::ErrorCode::INTERNAL,
                                                                "pagerd restarted before the prefetch finished; "
                                                                "the range may be partly loaded (ask again)"});
    fdstore::save(c);
    c.stored.clear();  // release() must not remove them from the store
    close_client(c, "daemon restarting; kept in the descriptor store");
}

void Worker::check_deadlines()
{
    // Off the fault path: at most every 50 ms, however busy the worker is.
    const auto now = Clock::now();
    if (now - m_last_deadline_check < std::chrono::milliseconds(50)) return;
    m_last_deadline_check = now;
    replay_throttled(false);
    tick_channels(now, true);
    reap_forked(now);
    for (auto it = m_clients.begin(); it != m_clients.end();) {
        Client& c = *(it++)->second;
        if (c.closing || c.hello_done || now < c.hello_deadline) continue;
        send_reply(c, 0, proto::ErrorReply{proto::ErrorCode::TIMEOUT, "no HELLO within " +
                          std::to_string(m_ctx.limits.hello_timeout_ms.load()) + " ms"});
        close_client(c, "no HELLO in time");
    }
}

void Worker::close_client(Client& c, const std::string& reason)
{
    if (c.closing) return;
    c.closing = true;
    cancel_jobs(c);
    spdlog::info("client {} ({}pid {}) disconnected: {}; freeing {} region(s)", c.serial,
                 c.name.empty() ? "" : c.name + ", ", c.peer.pid, reason, c.regions.count());
    // Dirty pages of Shared regions go to their files before anything is freed (a client
    // kept for the next daemon was written back already).
    std::vector<Region> all;
    c.regions.for_each([&](const Region& r) { all.push_back(r); });
    if (c.forked_from) poison_unloaded(c);  // before its userfaultfd closes
    if (!m_detach.load() || c.forked_from) fdstore::forget(c);
    c.stored.clear();
    {
        std::lock_guard lock(m_table_mutex);
        m_stats.regions.fetch_sub(c.regions.count(), std::memory_order_relaxed);
        m_stats.mapped_bytes.fetch_sub(c.regions.bytes(), std::memory_order_relaxed);
        c.regions = RegionTable{};
    }
    if (!m_detach.load()) forget(c, std::move(all), "client gone");
    if (c.uffd_flags & proto::k_uffd_user_mode_only)
        m_stats.user_mode_only_clients.fetch_sub(1, std::memory_order_relaxed);
    for (Op* op : {&c.sock_op, &c.uffds[0].op, &c.uffds[1].op}) {
        if (!op->armed) continue;
        io_uring_sqe* s = sqe();
        io_uring_prep_cancel(s, op, 0);
        io_uring_sqe_set_data(s, nullptr);
    }
    ++c.refs;  // balanced right away: destroys the client now if nothing refers to it
    release(c);
}

void Worker::close_doomed()
{
    for (const std::uint64_t serial : std::exchange(m_doomed, {}))
        if (auto it = m_clients.find(serial); it != m_clients.end()) close_client(*it->second, it->second->close_reason);
}

void Worker::release(Client& c)
{
    if (--c.refs > 0 || !c.closing) return;
    m_stats.clients.fetch_sub(1, std::memory_order_relaxed);
    m_ctx.connections.fetch_sub(1);
    std::unique_ptr<Client> doomed;
    {
        std::lock_guard lock(m_table_mutex);
        auto it = m_clients.find(c.serial);
        doomed = std::move(it->second);
        m_clients.erase(it);
    }
    // doomed closes the socket, the userfaultfds, the store files and the memfds here
}

void Worker::list_regions(std::vector<proto::RegionEntry>& out, long only_uid)
{
    std::lock_guard lock(m_table_mutex);
    for (const auto& [serial, c] : m_clients) {
        if (only_uid >= 0 && static_cast<long>(c->peer.uid) != only_uid) continue;
        c->regions.for_each([&](const Region& r) {
            proto::RegionEntry e;
            e.client = serial;
            e.pid = static_cast<std::uint32_t>(c->peer.pid);
            e.access = r.access;
            e.tracking = r.tracking;
            e.region_id = r.id;
            e.length = r.length;
            if (const tracking::Strategy* t = tracking::of(r)) e.dirty_pages = t->dirty_pages(r, m_ctx.page_size);
            const RegionState& st = *r.state;
            e.prefetch = st.prefetch;
            e.faults = st.faults.load(std::memory_order_relaxed);
            const Histogram* h = &st.latency;
            const auto lat = Histogram::summarize(&h, 1);
            e.latency_p50_ns = lat.p50;
            e.latency_p99_ns = lat.p99;
            e.prefetch_pending = st.prefetch_pending.load(std::memory_order_relaxed);
            for (unsigned b = 0; b < proto::k_latency_buckets; ++b)
                e.latency_histogram[b] = static_cast<std::uint32_t>(std::min<std::uint64_t>(st.latency.coarse(b), UINT32_MAX));
            out.push_back(e);
        });
    }
}

void Worker::list_caches(std::map<std::uint32_t, CacheUse>& out, long only_uid)
{
    std::lock_guard lock(m_table_mutex);
    for (const auto& [serial, c] : m_clients) {
        if (only_uid >= 0 && static_cast<long>(c->peer.uid) != only_uid) continue;
        c->regions.for_each([&](const Region& r) {
            if (!r.cache) return;
            CacheUse& u = out[r.cache->id()];
            u.cache = r.cache;
            u.clients.insert(serial);
            ++u.regions;
        });
    }
}

void Worker::list_stores(std::map<store::Identity, std::shared_ptr<store::Store>>& out, long only_uid)
{
    std::lock_guard lock(m_table_mutex);
    for (const auto& [serial, c] : m_clients) {
        if (only_uid >= 0 && static_cast<long>(c->peer.uid) != only_uid) continue;
        c->regions.for_each([&](const Region& r) {
            if (r.store) out.emplace(r.store->identity(), r.store);
        });
    }
}

bool Worker::protect_views(const Cache& cache, std::uint64_t first, std::uint64_t count)
{
    const std::uint64_t ps = m_ctx.page_size;
    bool ok = true;
    // Under the table lock: the clients, their regions and their userfaultfds stay as they are.
    std::lock_guard lock(m_table_mutex);
    for (const auto& [serial, c] : m_clients) {
        c->regions.for_each([&](const Region& r) {
            if (r.cache.get() != &cache || !r.shared()) return;
            const std::uint64_t rfirst = r.file_offset / ps, rend = rfirst + r.length / ps;
            const std::uint64_t from = std::max(first, rfirst), to = std::min(first + count, rend);
            const int uffd = c->uffds[r.uffd_slot].fd.get();
            if (from >= to || uffd < 0) return;
            uffdio_writeprotect wp{{r.start + (from - rfirst) * ps, (to - from) * ps}, UFFDIO_WRITEPROTECT_MODE_WP};
            // ESRCH: the client's address space is gone, nothing can write there any more.
            // Anything else (EAGAIN: it is changing, its event not yet read) fails the run.
            if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0 && errno != ESRCH) ok = false;
        });
    }
    return ok;
}

void Worker::queue_cache_writeback(std::shared_ptr<Cache> cache)
{
    auto job = std::make_unique<WriteJob>();
    job->why = "making room in the page cache";
    WriteJob::Part part;
    part.first = 0;
    part.count = 0;  // the whole file (the writer asks its size: no cache lock here)
    part.cache = std::move(cache);
    job->parts.push_back(std::move(part));
    m_writer->submit(std::move(job));
}

}  // namespace pagerd::daemon
