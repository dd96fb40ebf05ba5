// One worker's reads of one NBD export: a few connections, libnbd's asynchronous API, their
// sockets polled on the worker's io_uring (no thread per request; a thread only makes each
// connection, which may wait for the network). See nbd_store.hpp for the rules.
#include <libnbd.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <map>
#include <thread>
#include <vector>

#include "nbd_store.hpp"

namespace pagerd::daemon::store {
namespace {

struct Request {
    void* token = nullptr;
    std::uint8_t* dest = nullptr;
    unsigned len = 0;
    std::uint64_t off = 0;
    Clock::time_point t0, deadline;
    unsigned tries = 0;        // issued this many times
    unsigned parts = 0;        // pieces in flight
    int error = 0;             // of this try
    bool lost = false;         // this try's connection died: a retry is safe
    bool over = false;         // completed to the loop (done, failed or timed out)
    bool queued = false;       // waiting for a ready connection
    bool expired = false;      // past its deadline: fails once its pieces are back
    bool refused = false;      // libnbd refused it as it is (bounds, alignment): no retry
};

// What libnbd's callbacks hand back: run on the worker, inside nbd_aio_notify_*() or
// nbd_close(), and only recorded there.
struct Inbox {
    struct Done {
        std::shared_ptr<Request> req;
        int error;
    };
    std::vector<Done> done;
};

struct Part {
    std::shared_ptr<Request> req;
    std::shared_ptr<Inbox> inbox;
    bool called = false;
};

int on_part_done(void* user, int* error)
{
    auto* p = static_cast<Part*>(user);
    p->called = true;
    p->inbox->done.push_back({p->req, *error});
    return 1;  // retire the command
}

void free_part(void* user)
{
    auto* p = static_cast<Part*>(user);
    // Freed without a completion (the handle closed with it in flight): a lost connection.
    if (!p->called) p->inbox->done.push_back({p->req, ENOTCONN});
    delete p;
}

// A connection made by a thread of its own, taken by the channel when it is done.
struct Attempt {
    std::mutex m;
    bool done = false, abandoned = false;
    nbd_handle* h = nullptr;
    std::string why;
};

class NbdChannel;

struct Conn {
    enum class State { Idle, Connecting, Ready, Closing };
    struct PollWatch final : Watch {
        Conn* conn = nullptr;
        bool write = false;
        void ready(int revents) override;
    };
    NbdChannel* ch = nullptr;
    State state = State::Idle;
    nbd_handle* h = nullptr;
    PollWatch rw, ww;
    std::shared_ptr<Attempt> attempt;
    unsigned inflight = 0;
    Clock::time_point retry_at{};
    Clock::duration backoff = std::chrono::milliseconds(100);
};

class NbdChannel final : public Channel {
public:
    // The worker keeps the store alive as long as the channel (Worker::ChannelUse).
    NbdChannel(NbdStore& store, Loop& loop)
        : m_store(&store), m_loop(loop), m_conns(std::max(1u, m_store->options().connections))
    {
        for (auto& c : m_conns) {
            c.ch = this;
            c.rw.conn = c.ww.conn = &c;
            c.ww.write = true;
        }
    }
    ~NbdChannel() override
    {
        for (auto& c : m_conns) {
            if (c.attempt) abandon(c);
            if (c.h) ::nbd_close(c.h);
            c.h = nullptr;
        }
    }

    void read(void* buf, unsigned len, std::uint64_t off, void* token) override
    {
        auto r = std::make_shared<Request>();
        r->token = token;
        r->dest = static_cast<std::uint8_t*>(buf);
        r->t0 = Clock::now();
        r->deadline = r->t0 + m_store->options().timeout;
        const std::uint64_t size = m_store->size();
        r->off = off;
        r->len = off >= size ? 0 : static_cast<unsigned>(std::min<std::uint64_t>(len, size - off));
        if (r->len == 0) {  // at or past the end: like read(2)
            r->over = true;
            m_loop.complete(token, 0);
            return;
        }
        m_live.push_back(r);
        issue(r);
        after();
    }

    void tick(Clock::time_point now) override
    {
        for (auto& c : m_conns) {
            if (c.state == Conn::State::Connecting) take_connection(c);
        }
        for (auto& r : m_live) {
            if (r->over || r->expired || now < r->deadline) continue;
            r->expired = true;
            spdlog::warn("store {}: a read of {} bytes at {} took longer than {} ms", m_store->uri(), r->len, r->off,
                         m_store->options().timeout.count());
            if (r->parts == 0) {  // waiting for a connection: nothing of it is out
                time_out(*r);
                continue;
            }
            // Its pieces are reading into the caller's buffer: it fails once libnbd lets go
            // of them. A connection that let a read wait this long is not trusted any more:
            // closing it gives them back at once (and its other reads go to a new one).
            if (auto it = m_issued_on.find(r.get()); it != m_issued_on.end() && it->second->h &&
                                                      it->second->state == Conn::State::Ready)
                close(*it->second);
        }
        // Queued reads wait for a connection: make the missing ones (after a pause if the
        // last attempt failed).
        if (std::any_of(m_live.begin(), m_live.end(), [](const auto& r) { return r->queued && !r->over; }))
            for (auto& c : m_conns)
                if (c.state == Conn::State::Idle && now >= c.retry_at) connect(c);
        after();
    }

    bool idle() const override { return m_live.empty(); }

    bool closed() const override
    {
        return m_live.empty() && std::all_of(m_conns.begin(), m_conns.end(), [](const Conn& c) {
                   return !c.rw.armed && !c.ww.armed && c.state != Conn::State::Connecting;
               });
    }

    void shutdown() override
    {
        m_shutdown = true;
        // Reads still waiting for a connection fail now; those in flight fail as their
        // connection closes (no retry after a shutdown).
        for (auto& r : m_live)
            if (!r->over && r->parts == 0) {
                r->over = true;
                m_store->stats().read_errors.fetch_add(1, std::memory_order_relaxed);
                m_loop.complete(r->token, -EIO);
            }
        for (auto& c : m_conns) {
            if (c.state == Conn::State::Connecting) abandon(c);
            if (c.h) close(c);
        }
        after();
    }

    void on_poll(Conn& c, bool write, int revents)
    {
        if (!c.h) return;
        if (revents >= 0 && c.state == Conn::State::Ready) {
            if (write)
                ::nbd_aio_notify_write(c.h);
            else
                ::nbd_aio_notify_read(c.h);
            if (::nbd_aio_is_dead(c.h) || ::nbd_aio_is_closed(c.h)) {
                spdlog::warn("store {}: connection lost: {}", m_store->uri(),
                             ::nbd_get_error() ? ::nbd_get_error() : "closed");
                close(c);
            }
        }
        if (c.state == Conn::State::Closing && !c.rw.armed && !c.ww.armed) finish_close(c);
        after();
    }

private:
    // A connection that is ready, with the fewest requests in flight.
    Conn* pick()
    {
        Conn* best = nullptr;
        for (auto& c : m_conns)
            if (c.state == Conn::State::Ready && (!best || c.inflight < best->inflight)) best = &c;
        return best;
    }

    void issue(const std::shared_ptr<Request>& r)
    {
        // Every connection the channel may have is made once reads come (each on a thread
        // of its own): read-ahead and several faulting threads keep them all busy.
        for (auto& k : m_conns)
            if (k.state == Conn::State::Idle && Clock::now() >= k.retry_at) connect(k);
        Conn* c = pick();
        if (!c) {
            r->queued = true;
            return;
        }
        r->queued = false;
        r->error = 0;
        r->lost = false;
        ++r->tries;
        const std::uint64_t max = m_store->max_request();
        for (std::uint64_t at = 0; at < r->len; at += max) {
            const std::uint64_t n = std::min<std::uint64_t>(max, r->len - at);
            auto* part = new Part{r, m_inbox, false};
            nbd_completion_callback cb{.callback = on_part_done, .user_data = part, .free = free_part};
            ++r->parts;
            ++c->inflight;
            m_store->stats().inflight.fetch_add(1, std::memory_order_relaxed);
            // Refused at once (the connection is no longer ready): libnbd called free,
            // which recorded the part as lost; the rest is not sent, and the connection
            // goes (else the retry would pick it again).
            if (::nbd_aio_pread(c->h, r->dest + at, n, r->off + at, cb, 0) == -1) {
                const int err = ::nbd_get_errno();
                spdlog::warn("store {}: a read of {} bytes at {} was refused: {}", m_store->uri(), n, r->off + at,
                             ::nbd_get_error());
                m_issued_on[r.get()] = c;
                // The read itself is wrong for this export (past an end that moved, not
                // aligned as the server asks): it fails, the connection stays. Not when
                // the handle died under us (the server went: libnbd says EINVAL for "not
                // connected" too): that is a lost connection, retried on a new one.
                const bool dead = ::nbd_aio_is_dead(c->h) == 1 || ::nbd_aio_is_closed(c->h) == 1;
                if (!dead && (err == EINVAL || err == ERANGE || err == EOVERFLOW || err == ENOTSUP)) {
                    r->refused = true;
                    r->error = err;
                    return;
                }
                close(*c);
                return;
            }
        }
        m_issued_on[r.get()] = c;
    }

    // Completions libnbd recorded, then the polls the connections need now.
    void after()
    {
        while (!m_inbox->done.empty()) {
            auto done = std::move(m_inbox->done);
            m_inbox->done.clear();
            for (auto& d : done) part_done(d.req, d.error);
        }
        for (auto& c : m_conns) arm(c);
        m_live.remove_if([](const auto& r) { return r->over && r->parts == 0; });
    }

    void part_done(const std::shared_ptr<Request>& r, int error)
    {
        if (auto it = m_issued_on.find(r.get()); it != m_issued_on.end() && it->second->inflight) --it->second->inflight;
        m_store->stats().inflight.fetch_sub(1, std::memory_order_relaxed);
        if (error) {
            if (!r->error) r->error = error;
            if (error == ENOTCONN || error == ESHUTDOWN || error == ECONNRESET || error == EPIPE) r->lost = true;
        }
        if (r->parts && --r->parts) return;
        m_issued_on.erase(r.get());
        if (r->over) return;
        if (r->expired) return time_out(*r);
        if (!r->error) {
            r->over = true;
            const auto ns = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - r->t0).count());
            auto& st = m_store->stats();
            st.reads.fetch_add(1, std::memory_order_relaxed);
            st.read_bytes.fetch_add(r->len, std::memory_order_relaxed);
            st.read_done(ns);
            m_loop.complete(r->token, static_cast<int>(r->len));
            return;
        }
        // Reads change nothing: a lost connection's read is made again on another until
        // the deadline, and a read the server failed once more.
        if (!r->refused && (r->lost || r->tries < 2) && !m_shutdown && Clock::now() < r->deadline) {
            m_store->stats().retries.fetch_add(1, std::memory_order_relaxed);
            issue(r);
            return;
        }
        r->over = true;
        m_store->stats().read_errors.fetch_add(1, std::memory_order_relaxed);
        spdlog::warn("store {}: reading {} bytes at {} failed: {}", m_store->uri(), r->len, r->off,
                     std::strerror(r->error));
        m_loop.complete(r->token, -(r->error == ENOTCONN || r->refused ? EIO : r->error));
    }

    void time_out(Request& r)
    {
        r.over = true;
        m_store->stats().timeouts.fetch_add(1, std::memory_order_relaxed);
        m_store->stats().read_errors.fetch_add(1, std::memory_order_relaxed);
        m_loop.complete(r.token, -ETIMEDOUT);
    }

    void arm(Conn& c)
    {
        if (!c.h || c.state != Conn::State::Ready) return;
        const unsigned dir = ::nbd_aio_get_direction(c.h);
        const int fd = ::nbd_aio_get_fd(c.h);
        if (fd < 0) return;
        if ((dir & LIBNBD_AIO_DIRECTION_READ) && !c.rw.armed) m_loop.poll(c.rw, fd, POLLIN);
        if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && !c.ww.armed) m_loop.poll(c.ww, fd, POLLOUT);
    }

    void connect(Conn& c)
    {
        if (m_shutdown) return;
        c.state = Conn::State::Connecting;
        c.attempt = std::make_shared<Attempt>();
        auto a = c.attempt;
        Loop* loop = &m_loop;
        // The loop outlives every attempt it could be woken for: an abandoned attempt
        // wakes nobody.
        std::thread([a, uri = m_store->uri(), loop, timeout = m_store->options().timeout] {
            std::string why;
            bool timed_out = false;
            nbd_handle* h = nbd_connect(uri, timeout, why, timed_out);
            std::lock_guard lock(a->m);
            if (a->abandoned) {
                if (h) ::nbd_close(h);
                return;
            }
            a->h = h;
            a->why = std::move(why);
            a->done = true;
            loop->wake();
        }).detach();
    }

    void abandon(Conn& c)
    {
        std::lock_guard lock(c.attempt->m);
        c.attempt->abandoned = true;
        if (c.attempt->done && c.attempt->h) ::nbd_close(c.attempt->h);
        c.attempt.reset();
        c.state = Conn::State::Idle;
    }

    void take_connection(Conn& c)
    {
        nbd_handle* h = nullptr;
        std::string why;
        {
            std::lock_guard lock(c.attempt->m);
            if (!c.attempt->done) return;
            h = c.attempt->h;
            why = c.attempt->why;
        }
        c.attempt.reset();
        if (!h) {
            spdlog::warn("store {}: cannot connect: {}", m_store->uri(), why);
            c.state = Conn::State::Idle;
            c.retry_at = Clock::now() + c.backoff;
            c.backoff = std::min<Clock::duration>(c.backoff * 2, std::chrono::seconds(2));
            return;
        }
        if (m_ever_connected) m_store->stats().reconnects.fetch_add(1, std::memory_order_relaxed);
        m_ever_connected = true;
        c.h = h;
        c.state = Conn::State::Ready;
        c.backoff = std::chrono::milliseconds(100);
        m_store->stats().connections.fetch_add(1, std::memory_order_relaxed);
        for (auto& r : m_live)
            if (r->queued && !r->over) issue(r);
    }

    void close(Conn& c)
    {
        if (c.state == Conn::State::Ready) m_store->stats().connections.fetch_sub(1, std::memory_order_relaxed);
        c.state = Conn::State::Closing;
        if (c.rw.armed) m_loop.cancel(c.rw);
        if (c.ww.armed) m_loop.cancel(c.ww);
        if (!c.rw.armed && !c.ww.armed) finish_close(c);
    }

    // No poll refers to the socket any more: close it. libnbd frees the reads still in
    // flight, recorded as lost: after() retries them on another connection.
    void finish_close(Conn& c)
    {
        if (c.h) ::nbd_close(c.h);
        c.h = nullptr;
        c.inflight = 0;
        c.state = Conn::State::Idle;
        c.retry_at = Clock::now() + c.backoff;
        c.backoff = std::min<Clock::duration>(c.backoff * 2, std::chrono::seconds(2));
    }

    NbdStore* m_store;
    Loop& m_loop;
    std::vector<Conn> m_conns;
    std::list<std::shared_ptr<Request>> m_live;
    std::map<Request*, Conn*> m_issued_on;
    std::shared_ptr<Inbox> m_inbox = std::make_shared<Inbox>();
    bool m_ever_connected = false;
    bool m_shutdown = false;
};

void Conn::PollWatch::ready(int revents) { conn->ch->on_poll(*conn, write, revents); }

}  // namespace

std::unique_ptr<Channel> make_nbd_channel(NbdStore& store, Loop& loop)
{
    return std::make_unique<NbdChannel>(store, loop);
}

}  // namespace pagerd::daemon::store
