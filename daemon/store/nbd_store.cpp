#include "nbd_store.hpp"

#include <libnbd.h>
#include <poll.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <thread>

#include "uri.hpp"
#include "zero_store.hpp"

namespace pagerd::daemon::store {

std::unique_ptr<Channel> make_nbd_channel(NbdStore& store, Loop& loop);  // nbd_channel.cpp

namespace {

// Drives h's state machine until done() says so, the connection dies, or the deadline:
// 0, else an errno (ETIMEDOUT at the deadline, which leaves h to be closed).
template <class Done>
int drive(nbd_handle* h, Clock::time_point deadline, Done done)
{
    for (;;) {
        const int d = done();
        if (d != 0) return d > 0 ? 0 : (::nbd_get_errno() ? ::nbd_get_errno() : EIO);
        if (::nbd_aio_is_dead(h) || ::nbd_aio_is_closed(h)) return ::nbd_get_errno() ? ::nbd_get_errno() : ENOTCONN;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return ETIMEDOUT;
        const int fd = ::nbd_aio_get_fd(h);
        const unsigned dir = ::nbd_aio_get_direction(h);
        if (fd < 0) return ENOTCONN;
        pollfd p{fd, static_cast<short>(((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                                        ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0)),
                 0};
        const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
        if (n < 0 && errno != EINTR) return errno;
        if (n <= 0) continue;
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) ::nbd_aio_notify_read(h);
        else if (p.revents & POLLOUT) ::nbd_aio_notify_write(h);
    }
}

}  // namespace

nbd_handle* nbd_connect(const std::string& uri, std::chrono::milliseconds timeout, std::string& why,
                        bool& timed_out)
{
    timed_out = false;
    nbd_handle* h = ::nbd_create();
    if (!h) {
        why = std::string("nbd_create: ") + ::nbd_get_error();
        return nullptr;
    }
    // Only TCP and Unix sockets are reached. A query may name a local file (the TLS key of
    // tls-psk-file): the allow list makes the query exactly the operator's, so it is the
    // operator's file.
    ::nbd_set_uri_allow_local_file(h, true);
    ::nbd_set_uri_allow_transports(h, LIBNBD_ALLOW_TRANSPORT_TCP | LIBNBD_ALLOW_TRANSPORT_UNIX);
    ::nbd_set_handle_name(h, "pagerd");
    // Asynchronously, under the deadline: a server that accepts and never answers the
    // handshake costs the deadline, then its socket is closed (a blocking connect would
    // hold a thread and a descriptor for ever).
    const auto deadline = Clock::now() + timeout;
    int err = ::nbd_aio_connect_uri(h, uri.c_str()) == -1 ? (::nbd_get_errno() ? ::nbd_get_errno() : EIO) : 0;
    if (err) why = ::nbd_get_error() ? ::nbd_get_error() : "connection failed";
    if (!err) {
        err = drive(h, deadline, [&] { return ::nbd_aio_is_ready(h) ? 1 : 0; });
        if (err == ETIMEDOUT) {
            timed_out = true;
            why = "no connection within " + std::to_string(timeout.count()) + " ms";
        } else if (err) {
            why = ::nbd_get_error() ? ::nbd_get_error() : std::strerror(err);
        }
    }
    if (err) {
        ::nbd_close(h);
        return nullptr;
    }
    return h;
}

std::shared_ptr<NbdStore> NbdStore::open(const std::string& uri, const NbdOptions& options, std::string& why,
                                         bool& timed_out)
{
    nbd_handle* h = nbd_connect(uri, options.timeout, why, timed_out);
    if (!h) return nullptr;
    const std::int64_t size = ::nbd_get_size(h);
    if (size < 0) {
        why = std::string("the export's size: ") + ::nbd_get_error();
        ::nbd_close(h);
        return nullptr;
    }
    std::shared_ptr<NbdStore> s(new NbdStore);
    static std::atomic<std::uint64_t> serial{1};
    s->m_uri = uri;
    s->m_options = options;
    s->m_identity = {k_identity_nbd, serial.fetch_add(1)};
    s->m_size = static_cast<std::uint64_t>(size);
    s->m_read_only = ::nbd_is_read_only(h) != 0;
    s->m_can_flush = ::nbd_can_flush(h) == 1;
    if (const std::int64_t max = ::nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM); max > 0)
        s->m_max_request = std::min<std::uint64_t>(s->m_max_request, static_cast<std::uint64_t>(max));
    // The daemon reads whole pages at page offsets, and the export's tail up to its end: a
    // server whose smallest request is larger, or does not divide those, cannot be read.
    const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    if (const std::int64_t min = ::nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM); min > 1) {
        const auto m = static_cast<std::uint64_t>(min);
        if (m > page || page % m || static_cast<std::uint64_t>(size) % m || s->m_max_request % m) {
            why = "the server's smallest request is " + std::to_string(m) + " bytes: the daemon reads single " +
                  std::to_string(page) + "-byte pages and the export's end (" + std::to_string(size) + " bytes)";
            ::nbd_close(h);
            return nullptr;
        }
    }
    s->m_write = h;
    spdlog::info("store {}: {} bytes{}, requests of at most {} bytes", uri, size, s->m_read_only ? ", read-only" : "",
                 s->m_max_request);
    return s;
}

namespace {
std::mutex g_open_mutex;
std::map<std::string, std::weak_ptr<NbdStore>> g_open;  // by URI
}  // namespace

// Keyed by the canonical URI: two spellings of one export's name are one store, one cache
// (else a Shared page written through one would be overwritten from the other's copy).
std::shared_ptr<NbdStore> NbdStore::find(const std::string& uri)
{
    std::lock_guard lock(g_open_mutex);
    auto it = g_open.find(canonical_uri(uri));
    return it == g_open.end() ? nullptr : it->second.lock();
}

std::shared_ptr<NbdStore> NbdStore::open_shared(const std::string& uri, const NbdOptions& options, std::string& why,
                                                bool& timed_out)
{
    if (auto s = find(uri)) return s;
    auto s = open(uri, options, why, timed_out);
    if (!s) return nullptr;
    std::lock_guard lock(g_open_mutex);
    for (auto it = g_open.begin(); it != g_open.end();) it = it->second.expired() ? g_open.erase(it) : std::next(it);
    const std::string key = canonical_uri(uri);
    if (auto other = g_open[key].lock()) return other;  // opened meanwhile by another thread: one store
    g_open[key] = s;
    return s;
}

NbdStore::~NbdStore()
{
    if (m_write) ::nbd_close(m_write);
}

void NbdStore::prep_read(io_uring_sqe* sqe, void*, unsigned, std::uint64_t, bool, bool)
{
    io_uring_prep_nop(sqe);  // never used: the worker reads through open_channel()
}

void NbdStore::prep_write(io_uring_sqe* sqe, const void*, unsigned, std::uint64_t)
{
    io_uring_prep_nop(sqe);  // never used: ring_writes() is false
}

ssize_t NbdStore::write(const void* buf, std::uint64_t len, std::uint64_t off)
{
    if (m_read_only) {
        errno = EROFS;
        return -1;
    }
    std::lock_guard lock(m_write_mutex);
    const auto* p = static_cast<const std::uint8_t*>(buf);
    std::uint64_t done = 0;
    for (int attempt = 0; done < len;) {
        if (!m_write || ::nbd_aio_is_dead(m_write) || ::nbd_aio_is_closed(m_write)) {
            if (m_write) ::nbd_close(m_write);
            std::string why;
            bool timed_out = false;
            m_write = nbd_connect(m_uri, m_options.timeout, why, timed_out);
            if (!m_write) {
                spdlog::warn("store {}: no connection for write-back: {}", m_uri, why);
                stats().write_errors.fetch_add(1, std::memory_order_relaxed);
                errno = timed_out ? ETIMEDOUT : ENOTCONN;
                return -1;
            }
            stats().reconnects.fetch_add(1, std::memory_order_relaxed);
        }
        const std::uint64_t n = std::min(len - done, m_max_request);
        if (const int err = command(::nbd_aio_pwrite(m_write, p + done, n, off + done, NBD_NULL_COMPLETION, 0))) {
            stats().write_errors.fetch_add(1, std::memory_order_relaxed);
            // A connection that died is made again once; an error the server answered is final.
            if (attempt++ == 0 && err != ETIMEDOUT && (!m_write || ::nbd_aio_is_dead(m_write) || ::nbd_aio_is_closed(m_write)))
                continue;
            spdlog::warn("store {}: writing {} bytes at {} failed: {}", m_uri, n, off + done, std::strerror(err));
            errno = err;
            return -1;
        }
        stats().writes.fetch_add(1, std::memory_order_relaxed);
        stats().write_bytes.fetch_add(n, std::memory_order_relaxed);
        done += n;
    }
    return static_cast<ssize_t>(done);
}

int NbdStore::sync()
{
    if (!m_can_flush) return 0;  // the server writes through: nothing to make durable
    std::lock_guard lock(m_write_mutex);
    if (!m_write) return ENOTCONN;
    return command(::nbd_aio_flush(m_write, NBD_NULL_COMPLETION, 0));
}

// Caller holds m_write_mutex. Waits (up to the deadline) for the command `cookie` started
// on the write connection: 0 or an errno. At the deadline the connection is closed (which
// lets go of the caller's buffer) and made again by the next write.
int NbdStore::command(std::int64_t cookie)
{
    if (cookie == -1) return ::nbd_get_errno() ? ::nbd_get_errno() : EIO;
    const int err = drive(m_write, Clock::now() + m_options.timeout, [&] {
        const int c = ::nbd_aio_command_completed(m_write, static_cast<std::uint64_t>(cookie));
        return c == 1 ? 1 : c == -1 ? -1 : 0;
    });
    if (err == ETIMEDOUT) {
        spdlog::warn("store {}: a write-back command took longer than {} ms; its connection is closed", m_uri,
                     m_options.timeout.count());
        ::nbd_close(m_write);
        m_write = nullptr;
    }
    return err;
}

std::shared_ptr<Store> NbdStore::reopen_for_writing(std::string& why) const
{
    if (m_read_only) {
        why = "the export is read-only";
        return nullptr;
    }
    // Writes go through the store's own connection: no client holds anything of it.
    return std::const_pointer_cast<NbdStore>(shared_from_this());
}

std::unique_ptr<Channel> NbdStore::open_channel(Loop& loop) { return make_nbd_channel(*this, loop); }

}  // namespace pagerd::daemon::store
