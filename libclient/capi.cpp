// The C API: a thin shell over the C++ one. No exception crosses it.
#include <cerrno>
#include <string>

#include "pagerd/client.h"
#include "pagerd/client.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::libclient;

struct pagerd_conn {
    std::unique_ptr<Connection> conn;
};

namespace {

static_assert(PAGERD_ERROR_SYSTEM == static_cast<int>(ErrorDomain::System) &&
              PAGERD_ERROR_DAEMON == static_cast<int>(ErrorDomain::Daemon) &&
              PAGERD_ERROR_PROTOCOL == static_cast<int>(ErrorDomain::Protocol));
// Every protocol error code has a PAGERD_DAEMON_ constant of the same name and value.
#define PAGERD_X(name, value) static_assert(PAGERD_DAEMON_##name == (value));
PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X

// The calling thread's last failure: its message, the errno it maps to (to_errno), and
// the domain and code it had.
thread_local std::string t_error;
thread_local int t_errno = 0;
thread_local int t_domain = PAGERD_ERROR_NONE;
thread_local int t_daemon_code = 0;

int fail(const Error& e)
{
    t_error = e.message;
    t_errno = to_errno(e);
    t_domain = static_cast<int>(e.domain);
    t_daemon_code = e.domain == ErrorDomain::Daemon ? e.code : 0;
    return -1;
}

// The C API's own checks: always an errno value.
int fail(int errno_value, const char* text) { return fail(Error::system(errno_value, text)); }

template <class F>
int guarded(F&& f)
{
    try {
        return f();
    } catch (const std::bad_alloc&) {
        return fail(ENOMEM, "out of memory");
    } catch (const std::exception& e) {
        return fail(EIO, e.what());
    }
}

int map_common(pagerd_conn* c, Result<Region> r, pagerd_region* out)
{
    (void)c;
    if (!r) return fail(r.error());
    *out = pagerd_region{r->id, r->addr, r->size};
    return 0;
}

bool valid_access(int access)
{
    return access == PAGERD_READ_ONLY || access == PAGERD_PRIVATE_WRITABLE || access == PAGERD_SHARED;
}

MapOptions options(uint64_t offset, uint64_t length, int access, int tracking = PAGERD_TRACK_AUTO,
                   int prefetch = PAGERD_PREFETCH_SEQUENTIAL)
{
    const Prefetch p = prefetch == PAGERD_PREFETCH_NONE  ? Prefetch::None
                       : prefetch == PAGERD_PREFETCH_ALL ? Prefetch::All
                                                         : Prefetch::Sequential;
    const Access a = access == PAGERD_SHARED            ? Access::Shared
                     : access == PAGERD_PRIVATE_WRITABLE ? Access::PrivateWritable
                                                         : Access::ReadOnly;
    const Tracking t = tracking == PAGERD_TRACK_UFFD_WP   ? Tracking::UffdWp
                       : tracking == PAGERD_TRACK_SIGSEGV ? Tracking::Sigsegv
                       : tracking == PAGERD_TRACK_ASYNC   ? Tracking::Async
                                                          : Tracking::Auto;
    return MapOptions{offset, length, a, t, nullptr, p};
}

int flushed(Result<FlushResult> f, uint64_t* pages, uint64_t* bytes)
{
    if (!f) return fail(f.error());
    if (pages) *pages = f->pages;
    if (bytes) *bytes = f->bytes;
    return 0;
}

Region as_region(const pagerd_region* r)
{
    return Region{r->id, r->addr, r->size, Access::ReadOnly, Tracking::Auto};
}

}  // namespace

extern "C" {

int pagerd_connect(const char* socket_path, pagerd_conn** out)
{
    return guarded([&] {
        if (!out) return fail(EINVAL, "out is NULL");
        ConnectOptions o;
        if (socket_path) o.socket_path = socket_path;
        auto r = Connection::connect(o);
        if (!r) return fail(r.error());
        *out = new pagerd_conn{std::move(r.value())};
        return 0;
    });
}

int pagerd_disconnect(pagerd_conn* conn)
{
    return guarded([&] {
        delete conn;
        return 0;
    });
}

int pagerd_map_path(pagerd_conn* conn, const char* path, uint64_t offset, uint64_t length, int access,
                    pagerd_region* out)
{
    return guarded([&] {
        if (!conn || !path || !out) return fail(EINVAL, "conn, path and out must not be NULL");
        if (!valid_access(access)) return fail(EINVAL, "unknown access mode");
        return map_common(conn, conn->conn->map_file(path, options(offset, length, access)), out);
    });
}

int pagerd_map_fd(pagerd_conn* conn, int fd, uint64_t offset, uint64_t length, int access, pagerd_region* out)
{
    return pagerd_map_fd_tracked(conn, fd, offset, length, access, PAGERD_TRACK_AUTO, out);
}

int pagerd_map_fd_tracked(pagerd_conn* conn, int fd, uint64_t offset, uint64_t length, int access, int tracking,
                          pagerd_region* out)
{
    return guarded([&] {
        if (!conn || !out) return fail(EINVAL, "conn and out must not be NULL");
        if (!valid_access(access)) return fail(EINVAL, "unknown access mode");
        if (tracking < PAGERD_TRACK_AUTO || tracking > PAGERD_TRACK_ASYNC) return fail(EINVAL, "unknown tracking");
        return map_common(conn, conn->conn->map_fd(fd, options(offset, length, access, tracking)), out);
    });
}

int pagerd_map_fd_prefetch(pagerd_conn* conn, int fd, uint64_t offset, uint64_t length, int access, int tracking,
                           int prefetch, pagerd_region* out)
{
    return guarded([&] {
        if (!conn || !out) return fail(EINVAL, "conn and out must not be NULL");
        if (!valid_access(access)) return fail(EINVAL, "unknown access mode");
        if (tracking < PAGERD_TRACK_AUTO || tracking > PAGERD_TRACK_ASYNC) return fail(EINVAL, "unknown tracking");
        if (prefetch < PAGERD_PREFETCH_SEQUENTIAL || prefetch > PAGERD_PREFETCH_ALL)
            return fail(EINVAL, "unknown prefetch policy");
        return map_common(conn, conn->conn->map_fd(fd, options(offset, length, access, tracking, prefetch)), out);
    });
}

int pagerd_map_store(pagerd_conn* conn, const char* uri, uint64_t offset, uint64_t length, int access, int tracking,
                     int prefetch, pagerd_region* out)
{
    return guarded([&] {
        if (!conn || !uri || !out) return fail(EINVAL, "conn, uri and out must not be NULL");
        if (!valid_access(access)) return fail(EINVAL, "unknown access mode");
        if (tracking < PAGERD_TRACK_AUTO || tracking > PAGERD_TRACK_ASYNC) return fail(EINVAL, "unknown tracking");
        if (prefetch < PAGERD_PREFETCH_SEQUENTIAL || prefetch > PAGERD_PREFETCH_ALL)
            return fail(EINVAL, "unknown prefetch policy");
        return map_common(conn, conn->conn->map_store(uri, options(offset, length, access, tracking, prefetch)), out);
    });
}

int pagerd_prefetch(pagerd_conn* conn, const void* addr, uint64_t length, int wait)
{
    return guarded([&] {
        if (!conn) return fail(EINVAL, "conn must not be NULL");
        auto r = conn->conn->prefetch(addr, length, wait != 0);
        return r ? 0 : fail(r.error());
    });
}

int pagerd_flush(pagerd_conn* conn, const pagerd_region* region, uint64_t* pages, uint64_t* bytes)
{
    return guarded([&] {
        if (!conn || !region) return fail(EINVAL, "conn and region must not be NULL");
        return flushed(conn->conn->flush(as_region(region)), pages, bytes);
    });
}

int pagerd_flush_all(pagerd_conn* conn, uint64_t* pages, uint64_t* bytes)
{
    return guarded([&] {
        if (!conn) return fail(EINVAL, "conn must not be NULL");
        return flushed(conn->conn->flush_all(), pages, bytes);
    });
}

int pagerd_unmap(pagerd_conn* conn, const pagerd_region* region)
{
    return guarded([&] {
        if (!conn || !region) return fail(EINVAL, "conn and region must not be NULL");
        auto r = conn->conn->unmap(as_region(region));
        return r ? 0 : fail(r.error());
    });
}

int pagerd_status_get(pagerd_conn* conn, pagerd_status* out)
{
    return guarded([&] {
        if (!conn || !out) return fail(EINVAL, "conn and out must not be NULL");
        auto s = conn->conn->status();
        if (!s) return fail(s.error());
        *out = pagerd_status{s->uptime_ms, s->workers, s->clients, s->regions, s->mapped_bytes,
                             s->faults, s->pages_installed, s->bytes_read, s->sigbus_faults,
                             s->latency_p50_ns, s->latency_p99_ns, s->latency_max_ns,
                             s->user_mode_only_clients, s->this_client_user_mode_only ? 1 : 0};
        return 0;
    });
}

int pagerd_ping(pagerd_conn* conn)
{
    return guarded([&] {
        if (!conn) return fail(EINVAL, "conn is NULL");
        auto r = conn->conn->ping();
        return r ? 0 : fail(r.error());
    });
}

int pagerd_user_mode_only(const pagerd_conn* conn)
{
    return conn ? (conn->conn->user_mode_only() ? 1 : 0) : -1;
}

const char* pagerd_last_error(void) { return t_error.c_str(); }
int pagerd_last_error_code(void) { return t_errno; }
int pagerd_last_error_domain(void) { return t_domain; }
int pagerd_last_daemon_error(void) { return t_daemon_code; }

}  // extern "C"
