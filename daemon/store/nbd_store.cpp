#include "nbd_store.hpp"

#include <libnbd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <thread>

#include "zero_store.hpp"

namespace pagerd::daemon::store {

std::unique_ptr<Channel> make_nbd_channel(NbdStore& store, Loop& loop);  // nbd_channel.cpp

nbd_handle* nbd_connect(const std::string& uri, std::string& why)
{
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
    if (::nbd_connect_uri(h, uri.c_str()) == -1) {
        why = ::nbd_get_error() ? ::nbd_get_error() : "connection failed";
        ::nbd_close(h);
        return nullptr;
    }
    return h;
}

nbd_handle* nbd_connect_within(const std::string& uri, std::chrono::milliseconds timeout, std::string& why,
                               bool& timed_out)
{
    struct Attempt {
        std::mutex m;
        std::condition_variable cv;
        bool done = false, abandoned = false;
        nbd_handle* h = nullptr;
        std::string why;
    };
    auto a = std::make_shared<Attempt>();
    std::thread([a, uri] {
        std::string w;
        nbd_handle* h = nbd_connect(uri, w);
        std::lock_guard lock(a->m);
        if (a->abandoned) {
            if (h) ::nbd_close(h);
            return;
        }
        a->h = h;
        a->why = std::move(w);
        a->done = true;
        a->cv.notify_all();
    }).detach();
    std::unique_lock lock(a->m);
    timed_out = !a->cv.wait_for(lock, timeout, [&] { return a->done; });
    if (timed_out) {
        a->abandoned = true;
        why = "no connection within " + std::to_string(timeout.count()) + " ms";
        return nullptr;
    }
    why = a->why;
    return a->h;
}

std::shared_ptr<NbdStore> NbdStore::open(const std::string& uri, const NbdOptions& options, std::string& why,
                                         bool& timed_out)
{
    nbd_handle* h = nbd_connect_within(uri, options.timeout, why, timed_out);
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
    s->m_write = h;
    spdlog::info("store {}: {} bytes{}, requests of at most {} bytes", uri, size, s->m_read_only ? ", read-only" : "",
                 s->m_max_request);
    return s;
}

namespace {
std::mutex g_open_mutex;
std::map<std::string, std::weak_ptr<NbdStore>> g_open;  // by URI
}  // namespace

std::shared_ptr<NbdStore> NbdStore::find(const std::string& uri)
{
    std::lock_guard lock(g_open_mutex);
    auto it = g_open.find(uri);
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
    if (auto other = g_open[uri].lock()) return other;  // opened meanwhile by another thread: one store
    g_open[uri] = s;
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
            m_write = nbd_connect_within(m_uri, m_options.timeout, why, timed_out);
            if (!m_write) {
                spdlog::warn("store {}: no connection for write-back: {}", m_uri, why);
                stats().write_errors.fetch_add(1, std::memory_order_relaxed);
                errno = timed_out ? ETIMEDOUT : ENOTCONN;
                return -1;
            }
            stats().reconnects.fetch_add(1, std::memory_order_relaxed);
        }
        const std::uint64_t n = std::min(len - done, m_max_request);
        if (::nbd_pwrite(m_write, p + done, n, off + done, 0) == -1) {
            const int err = ::nbd_get_errno() ? ::nbd_get_errno() : EIO;
            stats().write_errors.fetch_add(1, std::memory_order_relaxed);
            // A connection that died is made again once; an error the server answered is final.
            if (attempt++ == 0 && (::nbd_aio_is_dead(m_write) || ::nbd_aio_is_closed(m_write))) continue;
            spdlog::warn("store {}: writing {} bytes at {} failed: {}", m_uri, n, off + done, ::nbd_get_error());
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
    if (::nbd_flush(m_write, 0) == -1) return ::nbd_get_errno() ? ::nbd_get_errno() : EIO;
    return 0;
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
