// A worker thread: owns an io_uring and a shard of the clients. Everything of a client
// (its socket, its userfaultfd, its regions, its loads in flight) is touched by its worker
// only, so the fault path takes no lock.
#pragma once
#include <liburing.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <set>
#include <unordered_map>
#include <vector>

#include "cache.hpp"
#include "config.hpp"
#include "fdstore.hpp"
#include "pagerd/proto/messages.hpp"
#include "pagerd/util/unique_fd.hpp"
#include "region_table.hpp"
#include "stats.hpp"
#include "store/nbd_store.hpp"
#include "store/store.hpp"
#include "writeback.hpp"

struct uffd_msg;

namespace pagerd::daemon {

using Clock = std::chrono::steady_clock;

// Limits that SIGHUP may change while the daemon runs.
struct Limits {
    std::atomic<unsigned> max_clients;
    std::atomic<unsigned> max_regions_per_client;
    std::atomic<std::uint64_t> max_mapped_bytes_per_client;
    std::atomic<unsigned> hello_timeout_ms;
    explicit Limits(const Config& c) { set(c); }
    void set(const Config& c)
    {
        max_clients = c.max_clients;
        max_regions_per_client = c.max_regions_per_client;
        max_mapped_bytes_per_client = c.max_mapped_bytes_per_client;
        hello_timeout_ms = c.hello_timeout_ms;
    }
};

// What every worker can see of the whole daemon.
struct Context {
    explicit Context(const Config& c) : config(c) {}
    const Config& config;  // what cannot change without a restart
    Limits limits{config};
    std::uint32_t page_size = 4096;
    Clock::time_point started = Clock::now();
    std::atomic<std::uint32_t> connections{0};
    std::atomic<std::uint64_t> next_client_serial{1};
    std::vector<const WorkerStats*> stats;  // one per worker, fixed before workers start
    std::vector<class Worker*> workers;      // likewise
    CachePool* cache = nullptr;              // the page cache of every client, set before workers start
    store::NbdOptions nbd;                   // connections and deadline of NBD stores
    // --allow-store, which SIGHUP may change (regions mapped already stay).
    std::vector<std::string> allowed_stores() const
    {
        std::lock_guard lock(m_allow_mutex);
        return m_allow;
    }
    void set_allowed_stores(std::vector<std::string> prefixes)
    {
        std::lock_guard lock(m_allow_mutex);
        m_allow = std::move(prefixes);
    }

private:
    mutable std::mutex m_allow_mutex;
    std::vector<std::string> m_allow{config.allow_store};
};

struct Client;
class Writer;
struct Load;

// io_uring user_data points at one of these.
struct Op {
    enum class Kind : std::uint8_t { Inbox, SockPoll, UffdPoll, Read, StorePoll };
    Kind kind;
    Client* client = nullptr;
    Load* load = nullptr;
    store::Watch* watch = nullptr;  // StorePoll: a remote store's socket
    bool armed = false;
    unsigned slot = 0;  // UffdPoll: which userfaultfd
};

struct Fault {
    std::uint64_t page;
    Clock::time_point t0;
    bool write = false;  // a first touch that is a write
    unsigned slot = 0;   // the userfaultfd it came from
    bool minor = false;  // a CACHE region's page the cache holds (UFFD_PAGEFAULT_FLAG_MINOR)
};

struct PrefetchJob;

// A WAIT prefetch: answered once every job it waits for has ended.
struct PrefetchWaiter {
    std::uint32_t request_id = 0;
    unsigned remaining = 0;  // jobs still running
};

// One block being read from the store for a client, and the faults waiting on it.
struct Load {
    enum class Kind : std::uint8_t { Fault, Readahead, Prefetch };
    Op op{Op::Kind::Read};
    Kind kind = Kind::Fault;
    Client* client = nullptr;
    std::uint64_t region_id = 0;
    std::shared_ptr<RegionState> state;
    std::uint64_t addr = 0;  // client address of the block
    std::uint64_t len = 0;
    std::uint64_t file_offset = 0;
    std::shared_ptr<store::Store> store;
    std::shared_ptr<Cache> cache;  // CACHE regions: filled here, then mapped into the client
    unsigned slot = 0;          // userfaultfd the region is registered with
    bool write_protect = false; // install with UFFDIO_COPY_MODE_WP (uffd-wp and async regions)
    bool from_cache = false;    // CACHE region: the cache held the whole block, nothing was read
    std::uint64_t cache_epoch = 0;  // CACHE region: Cache::load_epoch() before the read
    std::uint8_t* buf = nullptr;
    std::uint64_t done = 0;  // bytes read so far
    std::uint64_t skip = 0;  // a stream's marker page, not installed (0: none)
    PrefetchJob* job = nullptr;  // Kind::Prefetch: the job it belongs to
    std::vector<PrefetchJob*> also_jobs;  // other jobs whose range it covers: they wait for it
    std::vector<Fault> faults;
};

// A range of one region to load in the background: a PREFETCH request or an ALL fill.
struct PrefetchJob {
    std::uint64_t region_id = 0;
    std::shared_ptr<RegionState> state;
    std::uint64_t start = 0, next = 0, end = 0;  // next: where the following load starts
    unsigned inflight = 0;                       // its loads being read
    std::vector<std::shared_ptr<PrefetchWaiter>> waiters;
};

struct Client {
    std::uint64_t serial = 0;
    ucred peer{};
    std::string name;
    util::UniqueFd sock;
    // [0]: the main userfaultfd; [1]: the optional one with UFFD_FEATURE_WP_ASYNC.
    struct Uffd {
        util::UniqueFd fd;
        std::uint64_t features = 0;
        Op op{Op::Kind::UffdPoll};
    } uffds[2];
    std::uint32_t uffd_flags = 0;  // of the main userfaultfd
    bool hello_done = false;
    bool closing = false;
    Clock::time_point hello_deadline;
    RegionTable regions;
    std::uint64_t next_region_id = 1;
    std::map<std::uint64_t, Load*> inflight;  // by address; loads never overlap
    std::list<PrefetchJob> jobs;              // queued PREFETCH requests and fills, in order
    bool paused = false;  // a WAIT prefetch or a FLUSH is pending: the socket is not read meanwhile
    bool flush_pending = false;  // its FLUSH is being written (answered by on_written)
    std::string close_reason;    // a reply could not be sent: closed at the end of the loop turn
    util::UniqueFd reply_fd;     // sent with the next reply (CACHE_MAPPED's cache descriptor)
    std::vector<Fault> deferred;  // faults read while draining events inside a copy
    Op sock_op{Op::Kind::SockPoll};
    unsigned refs = 0;  // io_uring ops and queued faults that point at this client
    bool restored = false;       // taken back from the descriptor store at start
    util::UniqueFd state;        // its description for a restart (fdstore.cpp)
    std::string state_text;      // what state holds
    std::set<std::string> stored;  // names of its descriptors in the descriptor store
    // A forked child (fork.cpp): no socket, one userfaultfd (taken from UFFD_EVENT_FORK),
    // the regions it inherited; gone when its address space is. The parent's serial.
    std::uint64_t forked_from = 0;
    // A forked child taken back from the descriptor store: ranges of regions it could not
    // keep (start, length). Faults there get SIGBUS; poison_unloaded() marks them too.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> lost;
    std::uint64_t unthrottled_page = 0;     // a throttled write, replayed: that page is not
    Clock::time_point unthrottled_until{};  // throttled again until then
};

class Worker {
public:
    Worker(Context& ctx, unsigned index);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    void start();
    // Asks the thread to close every client and return. detach: keep the clients for the
    // next daemon (descriptor store): write back, save their state, close nothing for good.
    void stop(bool detach = false);
    void join();
    // Thread-safe: hands a freshly accepted connection to this worker.
    void adopt(util::UniqueFd sock, const ucred& peer);
    void adopt(std::unique_ptr<Client> restored);  // from the descriptor store
    const WorkerStats& stats() const { return m_stats; }
    // Thread-safe: appends an entry for every region of this worker's clients (of the
    // clients of `only_uid`, unless it is -1).
    void list_regions(std::vector<proto::RegionEntry>& out, long only_uid = -1);
    // Thread-safe: the caches this worker's clients (of `only_uid`, unless -1) map, by
    // cache id, with the connections and region pieces that map each.
    struct CacheUse {
        std::shared_ptr<Cache> cache;
        std::set<std::uint64_t> clients;
        std::uint32_t regions = 0;
    };
    void list_caches(std::map<std::uint32_t, CacheUse>& out, long only_uid = -1);
    // Thread-safe: the stores this worker's clients (of `only_uid`, unless -1) map.
    void list_stores(std::map<store::Identity, std::shared_ptr<store::Store>>& out, long only_uid = -1);
    // Thread-safe: write-protects pages [first, first + count) of `cache` in every Shared
    // view of it that this worker's clients map; false if one could not be protected.
    bool protect_views(const Cache& cache, std::uint64_t first, std::uint64_t count);
    // Thread-safe: writes back every dirty page of `cache` (on this worker's writer).
    void queue_cache_writeback(std::shared_ptr<Cache> cache);
    std::uint32_t client_count() const { return m_stats.clients.load(std::memory_order_relaxed); }
    // When the worker's loop last turned (it turns at least every 200 ms): the watchdog
    // pings only while every worker keeps turning.
    Clock::time_point last_turn() const { return Clock::time_point(Clock::duration(m_last_turn.load())); }

private:
    // worker.cpp: loop and lifecycle
    void run();
    void handle_completion(Op* op, int res);
    void take_inbox();
    void check_deadlines();
    io_uring_sqe* sqe();
    void arm_poll(Client& c, Op& op, int fd);
    // Takes c into m_clients, counted, its socket and userfaultfds polled; null when the
    // worker is stopping (c was closed, and may be gone).
    Client* enlist(std::unique_ptr<Client> c);
    void close_client(Client& c, const std::string& reason);
    void release(Client& c);  // drops one reference; destroys a closing client at zero
    // Runs f(table) under the table mutex and keeps the region counters in step.
    template <class F>
    auto change_table(Client& c, F&& f)
    {
        std::lock_guard lock(m_table_mutex);
        const auto n0 = c.regions.count();
        const auto b0 = c.regions.bytes();
        auto result = f(c.regions);
        // unsigned wrap-around makes a net decrease come out right
        m_stats.regions.fetch_add(c.regions.count() - n0, std::memory_order_relaxed);
        m_stats.mapped_bytes.fetch_add(c.regions.bytes() - b0, std::memory_order_relaxed);
        fdstore::save(c);
        return result;
    }
    void detach_client(Client& c);
    // Stopping: closes (or detaches) c once the loads it has in flight went in.
    void stop_client_when_idle(Client& c);

    // session.cpp: control messages
    void on_socket_readable(Client& c);
    // deferred: the reply is sent later (a WAIT prefetch), not by the caller.
    proto::Body handle_request(Client& c, proto::Message& msg, std::vector<util::UniqueFd>& fds,
                               bool& disconnect, bool& deferred);
    // Never closes c at once (a caller may hold pointers into it): a client that cannot
    // take its reply is closed by close_doomed() at the end of the loop turn.
    void send_reply(Client& c, std::uint32_t request_id, proto::Body body);
    void close_doomed();
    void resume_requests(Client& c);  // the deferred reply went out: read the socket again
    proto::Body on_hello(Client& c, const proto::Hello& m, bool& disconnect);
    proto::Body on_register(Client& c, const proto::RegisterUffd& m, util::UniqueFd fd);
    proto::Body on_map(Client& c, const proto::Map& m, util::UniqueFd fd);
    void check_shared_cache_map(Client& c, const proto::Map& m, int fl);
    proto::Body on_unmap(Client& c, const proto::Unmap& m);
    proto::Body on_status(Client& c);
    proto::Body on_map_shared(Client& c, const proto::MapShared& m, util::UniqueFd file, util::UniqueFd memfd);
    proto::Body on_flush(Client& c, const proto::Flush& m, std::uint32_t request_id, bool& deferred);
    proto::Body on_regions(Client& c, const proto::RegionsRequest& m);
    proto::Body on_caches(Client& c, const proto::CachesRequest& m);
    proto::Body on_stores(Client& c, const proto::StoresRequest& m);
    // MAP_STORE: a zero store, or an NBD store open already, at once; else the store is
    // opened by a thread of its own and the reply deferred (store_opened()).
    proto::Body on_map_store(Client& c, const proto::MapStore& m, std::uint32_t request_id, bool& deferred);
    proto::Body map_store(Client& c, const proto::MapStore& m, std::shared_ptr<store::Store> s);
    proto::Body add_mapped(Client& c, std::uint64_t addr, std::uint64_t length, std::uint64_t offset,
                           std::uint32_t flags, proto::Prefetch prefetch, std::shared_ptr<store::Store> store);
    struct Opened {  // a store opened for a deferred MAP_STORE
        std::uint64_t client = 0;
        std::uint32_t request_id = 0;
        proto::MapStore request;
        std::shared_ptr<store::Store> store;
        std::string why;
        bool timed_out = false;
    };
    void store_opened(Opened& o);

    proto::Body on_prefetch(Client& c, const proto::PrefetchRequest& m, std::uint32_t request_id, bool& deferred);
    void check_map_range(Client& c, std::uint64_t addr, std::uint64_t length, std::uint64_t file_offset,
                         int file_fd);
    void check_map_range(Client& c, std::uint64_t addr, std::uint64_t length, std::uint64_t file_offset,
                         std::uint64_t size, const char* what);
    void add_region(Client& c, Region r);
    // flush.cpp: dirty pages to files, written by m_writer
    // A FLUSH of r: collects its dirty pages into job (write-protecting uffd-wp ones).
    void collect_flush(Client& c, const Region& r, WriteJob& job);
    std::unique_ptr<WriteJob> new_write_job(const Client& c, const char* why);
    // Pieces leaving the table: their dirty and flushing pages are queued for writing.
    void forget(Client& c, std::vector<Region> pieces, const char* why);
    void on_written(const WriteJob& job);  // answers the FLUSH, or logs

    // faults.cpp: the fault path
    void on_uffd_readable(Client& c, unsigned slot);
    bool read_uffd(Client& c, unsigned slot, bool defer_faults);  // false: nothing more to read
    void on_uffd_message(Client& c, unsigned slot, const uffd_msg& msg, bool defer_faults);
    void handle_fault(Client& c, Fault f);
    void drain_events(Client& c);  // reads pending uffd messages now; serves the faults among them
    // fork.cpp: forked children
    void on_fork(Client& parent, unsigned slot, util::UniqueFd child_uffd);
    void reap_forked(Clock::time_point now);  // closes the children whose process is gone
    void poison_unloaded(Client& c);  // a child that lives on: its unloaded pages raise SIGBUS
    Clock::time_point m_last_reap{};
    // may_throttle: a first write to a page cache page waits while the dirty pages of all
    // caches are over their limit (m_throttled, replayed by replay_throttled()).
    void handle_write_protect_fault(Client& c, const Fault& f, bool may_throttle = true);
    bool throttled_write(Client& c, const Region& r, std::uint64_t page);  // a first write that must wait
    void replay_throttled(bool all);  // all: stopping, or the client leaves
    void handle_minor_fault(Client& c, const Fault& f);  // CACHE regions: the cache holds the page
    void mark_written(Client& c, const Region& r, std::uint64_t page);
    void start_read(Load& l);  // from the page cache at once if it holds the data, else io_uring
    bool m_fixed_buffers = false;  // the staging buffers are registered with the ring
    void submit_read(Load& l);
    void on_read_done(Load& l, int res);
    void install(Client& c, Load& l);
    std::uint64_t install_cached(Client& c, Load& l, std::uint64_t valid);
    std::uint64_t copy_in(Client& c, Load& l, std::uint64_t from, std::uint64_t len);
    bool still_backs(Client& c, const Load& l, std::uint64_t addr);
    void signal_unservable(Client& c, unsigned slot, std::uint64_t page);
    void finish_load(Load* l);
    void run_waiting();

    // readahead.cpp: loads beyond the faulting page
    Load* inflight_at(Client& c, std::uint64_t addr);
    // Takes a free buffer (the caller checked there is one) for [addr, addr + len) of r.
    Load* new_load(Client& c, const Region& r, std::uint64_t addr, std::uint64_t len, Load::Kind kind);
    // The block a fault at `page` loads: its fault block, cut at the region's end and
    // before any load in flight.
    std::pair<std::uint64_t, std::uint64_t> fault_range(Client& c, const Region& r, std::uint64_t page);
    // Follows sequential streams; starts read-ahead loads when a fault continues one.
    void readahead(Client& c, const Region& r, std::uint64_t page, bool in_flight);
    // Starts loads over [from, to) that are not in flight yet, while more than `reserve`
    // buffers are free; returns where it stopped (to, unless buffers ran out).
    std::uint64_t load_range(Client& c, const Region& r, std::uint64_t from, std::uint64_t to, Load::Kind kind,
                             PrefetchJob* job, std::uint64_t marker, unsigned reserve);
    void queue_prefetch(Client& c, const Region& r, std::uint64_t from, std::uint64_t to,
                        const std::shared_ptr<PrefetchWaiter>& waiter);
    void process_ready();  // loads whose data came from the page cache at once
    bool pump_prefetches();  // background loads with the buffers faults leave free; false: none started
    void end_job(Client& c, std::list<PrefetchJob>::iterator job);
    void cancel_jobs(Client& c);  // the client goes: its jobs end unanswered
    void poll_for_faults();    // --poll-us: read the uffds of busy clients before sleeping

    // remote stores (store_loop.cpp): each store's channel of this worker, its polls
    store::Channel* channel_for(const std::shared_ptr<store::Store>& s);
    void store_poll(store::Watch& w, int fd, unsigned events);
    void store_cancel(store::Watch& w);
    void run_store_completions();  // reads the channels completed, as ring completions
    void tick_channels(Clock::time_point now, bool close_unused);
    class StoreLoop final : public store::Loop {
    public:
        explicit StoreLoop(Worker& w) : m_w(w) {}
        void poll(store::Watch& w, int fd, unsigned events) override { m_w.store_poll(w, fd, events); }
        void cancel(store::Watch& w) override { m_w.store_cancel(w); }
        void complete(void* token, int res) override { m_w.m_store_done.push_back({token, res}); }
        void wake() override;

    private:
        Worker& m_w;
    };

    Context& m_ctx;
    unsigned m_index;
    WorkerStats m_stats;
    io_uring m_ring{};
    util::UniqueFd m_inbox_fd;  // eventfd
    Op m_inbox_op{Op::Kind::Inbox};
    std::mutex m_inbox_mutex;
    std::vector<std::unique_ptr<Client>> m_inbox;
    std::atomic<bool> m_stop{false};
    std::atomic<bool> m_detach{false};
    bool m_stopping = false;
    std::thread m_thread;
    std::map<std::uint64_t, std::unique_ptr<Client>> m_clients;
    std::uint8_t* m_buffers = nullptr;  // staging_buffers blocks, one mmap
    std::size_t m_buffers_bytes = 0;
    std::vector<std::uint8_t*> m_free_buffers;
    std::deque<std::pair<Client*, Fault>> m_waiting;  // faults waiting for a buffer
    std::vector<Load*> m_ready;  // read at once (start_read): installed by process_ready()
    struct Throttled {
        std::uint64_t client;  // serial
        Fault fault;
    };
    std::vector<Throttled> m_throttled;  // first writes waiting for write-back (oldest first)
    std::uint64_t m_uffd_reads = 0;  // uffd reads that brought messages
    bool m_fault_seen = false;      // a fault arrived since the loop last slept
    std::vector<std::uint64_t> m_busy;  // clients that faulted lately (serials), for poll_for_faults
    Clock::time_point m_last_deadline_check{};
    std::atomic<Clock::rep> m_last_turn{Clock::now().time_since_epoch().count()};
    std::mutex m_table_mutex;  // held by this worker while it changes m_clients or a region
                               // table, and by other threads while they read them
    std::vector<std::uint64_t> m_doomed;  // serials of clients to close at the end of the turn
    std::unique_ptr<Writer> m_writer;
    // Stores opened for deferred MAP_STOREs, posted by their threads (shared: a thread may
    // outlive the worker). Guarded by its mutex; the eventfd is the worker's, duplicated.
    struct OpenedBox {
        std::mutex mutex;
        std::vector<Opened> done;
        util::UniqueFd wake;
    };
    std::shared_ptr<OpenedBox> m_opened = std::make_shared<OpenedBox>();
    StoreLoop m_store_loop{*this};
    struct ChannelUse {
        ChannelUse() = default;
        ChannelUse(ChannelUse&&) = default;
        ChannelUse& operator=(ChannelUse&&) = default;
        ~ChannelUse()
        {
            channel.reset();  // before the store it reads
            if (store) store->channel_holders().fetch_sub(1);
        }
        std::shared_ptr<store::Store> store;
        std::unique_ptr<store::Channel> channel;
        bool shut = false;
    };
    std::map<const store::Store*, ChannelUse> m_channels;  // destroyed before m_store_loop
    std::list<ChannelUse> m_closing_channels;
    std::unordered_map<store::Watch*, Op*> m_watch_ops;
    std::vector<std::pair<void*, int>> m_store_done;
};

}  // namespace pagerd::daemon
