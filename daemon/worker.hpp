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
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "config.hpp"
#include "pagerd/proto/messages.hpp"
#include "pagerd/util/unique_fd.hpp"
#include "region_table.hpp"
#include "stats.hpp"

struct uffd_msg;

namespace pagerd::daemon {

using Clock = std::chrono::steady_clock;

// What every worker can see of the whole daemon.
struct Context {
    const Config& config;
    std::uint32_t page_size = 4096;
    Clock::time_point started = Clock::now();
    std::atomic<std::uint32_t> connections{0};
    std::atomic<std::uint64_t> next_client_serial{1};
    std::vector<const WorkerStats*> stats;  // one per worker, fixed before workers start
};

struct Client;
struct Load;

// io_uring user_data points at one of these.
struct Op {
    enum class Kind : std::uint8_t { Inbox, SockPoll, UffdPoll, Read };
    Kind kind;
    Client* client = nullptr;
    Load* load = nullptr;
    bool armed = false;
};

struct Fault {
    std::uint64_t page;
    Clock::time_point t0;
};

// One block being read from the store for a client, and the faults waiting on it.
struct Load {
    Op op{Op::Kind::Read};
    Client* client = nullptr;
    std::uint64_t region_id = 0;
    std::uint64_t addr = 0;  // client address of the block
    std::uint64_t len = 0;
    std::uint64_t file_offset = 0;
    std::shared_ptr<util::UniqueFd> file;
    std::uint8_t* buf = nullptr;
    std::uint64_t done = 0;  // bytes read so far
    std::vector<Fault> faults;
};

struct Client {
    std::uint64_t serial = 0;
    ucred peer{};
    std::string name;
    util::UniqueFd sock;
    util::UniqueFd uffd;
    std::uint64_t uffd_features = 0;
    std::uint32_t uffd_flags = 0;
    bool hello_done = false;
    bool closing = false;
    Clock::time_point hello_deadline;
    RegionTable regions;
    std::uint64_t next_region_id = 1;
    std::unordered_map<std::uint64_t, Load*> inflight;  // by block address
    std::vector<Fault> deferred;  // faults read while draining events inside a copy
    Op sock_op{Op::Kind::SockPoll};
    Op uffd_op{Op::Kind::UffdPoll};
    unsigned refs = 0;  // io_uring ops and queued faults that point at this client
};

class Worker {
public:
    Worker(Context& ctx, unsigned index);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    void start();
    void stop();  // asks the thread to close every client and return
    void join();
    // Thread-safe: hands a freshly accepted connection to this worker.
    void adopt(util::UniqueFd sock, const ucred& peer);
    const WorkerStats& stats() const { return m_stats; }
    std::uint32_t client_count() const { return m_stats.clients.load(std::memory_order_relaxed); }

private:
    // worker.cpp: loop and lifecycle
    void run();
    void handle_completion(Op* op, int res);
    void take_inbox();
    void check_deadlines();
    io_uring_sqe* sqe();
    void arm_poll(Client& c, Op& op, int fd);
    void close_client(Client& c, const std::string& reason);
    void release(Client& c);  // drops one reference; destroys a closing client at zero

    // session.cpp: control messages
    void on_socket_readable(Client& c);
    proto::Body handle_request(Client& c, proto::Message& msg, std::vector<util::UniqueFd>& fds,
                               bool& disconnect);
    void send_reply(Client& c, std::uint32_t request_id, proto::Body body);
    proto::Body on_hello(Client& c, const proto::Hello& m, bool& disconnect);
    proto::Body on_register(Client& c, const proto::RegisterUffd& m, util::UniqueFd fd);
    proto::Body on_map(Client& c, const proto::Map& m, util::UniqueFd fd);
    proto::Body on_unmap(Client& c, const proto::Unmap& m);
    proto::Body on_status(Client& c);

    // faults.cpp: the fault path
    void on_uffd_readable(Client& c);
    bool read_uffd(Client& c, bool defer_faults);  // false: nothing more to read
    void on_uffd_message(Client& c, const uffd_msg& msg, bool defer_faults);
    void handle_fault(Client& c, Fault f);
    void start_load(Client& c, const Region& r, std::uint64_t block, Fault f);
    void submit_read(Load& l);
    void on_read_done(Load& l, int res);
    void install(Client& c, Load& l);
    std::uint64_t copy_in(Client& c, Load& l, std::uint64_t len);
    bool still_backs(Client& c, const Load& l, std::uint64_t addr);
    void signal_unservable(Client& c, std::uint64_t page);
    void finish_load(Load* l);
    void run_waiting();

    Context& m_ctx;
    unsigned m_index;
    WorkerStats m_stats;
    io_uring m_ring{};
    util::UniqueFd m_inbox_fd;  // eventfd
    Op m_inbox_op{Op::Kind::Inbox};
    std::mutex m_inbox_mutex;
    std::vector<std::pair<util::UniqueFd, ucred>> m_inbox;
    std::atomic<bool> m_stop{false};
    bool m_stopping = false;
    std::thread m_thread;
    std::map<std::uint64_t, std::unique_ptr<Client>> m_clients;
    std::uint8_t* m_buffers = nullptr;  // staging_buffers blocks, one mmap
    std::size_t m_buffers_bytes = 0;
    std::vector<std::uint8_t*> m_free_buffers;
    std::deque<std::pair<Client*, Fault>> m_waiting;  // faults waiting for a buffer
    Clock::time_point m_last_deadline_check{};
};

}  // namespace pagerd::daemon
