/* libclient C API. Every function returns 0 on success and -1 on failure; then, for the
 * calling thread, pagerd_last_error() gives a message, pagerd_last_error_code() an errno
 * value, and pagerd_last_error_domain() / pagerd_last_daemon_error() where the failure came
 * from (see "Errors" below). Nothing here exits or aborts. */
#ifndef PAGERD_CLIENT_H
#define PAGERD_CLIENT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pagerd_conn pagerd_conn;

enum pagerd_access { PAGERD_READ_ONLY = 0, PAGERD_PRIVATE_WRITABLE = 1, PAGERD_SHARED = 2 };
/* How writes to a PAGERD_SHARED region are noticed (docs/writes.md). */
enum pagerd_tracking {
    PAGERD_TRACK_AUTO = 0,
    PAGERD_TRACK_UFFD_WP = 1,
    PAGERD_TRACK_SIGSEGV = 2,
    PAGERD_TRACK_ASYNC = 3
};

typedef struct pagerd_region {
    uint64_t id;
    void* addr;
    size_t size;
} pagerd_region;

typedef struct pagerd_status {
    uint64_t uptime_ms;
    uint32_t workers;
    uint32_t clients;
    uint64_t regions;
    uint64_t mapped_bytes;
    uint64_t faults;
    uint64_t pages_installed;
    uint64_t bytes_read;
    uint64_t sigbus_faults;
    uint64_t latency_p50_ns;
    uint64_t latency_p99_ns;
    uint64_t latency_max_ns;
    uint32_t user_mode_only_clients;
    int this_client_user_mode_only;
} pagerd_status;

/* socket_path may be NULL: then $PAGERD_SOCKET, else /run/pagerd/pagerd.sock. */
int pagerd_connect(const char* socket_path, pagerd_conn** out);
/* Unmaps every region still mapped and frees conn. conn may be NULL. */
int pagerd_disconnect(pagerd_conn* conn);
int pagerd_map_path(pagerd_conn* conn, const char* path, uint64_t offset, uint64_t length,
                    int access, pagerd_region* out);
int pagerd_map_fd(pagerd_conn* conn, int fd, uint64_t offset, uint64_t length, int access,
                  pagerd_region* out);
/* Like pagerd_map_fd, with the tracking of a PAGERD_SHARED region chosen. The file must
 * be open O_RDWR for PAGERD_SHARED. */
int pagerd_map_fd_tracked(pagerd_conn* conn, int fd, uint64_t offset, uint64_t length, int access,
                          int tracking, pagerd_region* out);
/* What the daemon loads besides the faulting pages (see pagerd::libclient::Prefetch). */
enum pagerd_prefetch {
    PAGERD_PREFETCH_SEQUENTIAL = 0, /* read-ahead for sequential streams (the default) */
    PAGERD_PREFETCH_NONE = 1,       /* the faulting block only */
    PAGERD_PREFETCH_ALL = 2         /* the whole region in the background, faults first */
};
/* Like pagerd_map_fd_tracked, with a prefetch policy. */
int pagerd_map_fd_prefetch(pagerd_conn* conn, int fd, uint64_t offset, uint64_t length, int access,
                           int tracking, int prefetch, pagerd_region* out);
/* A region of a store the daemon reaches itself (daemon capability STORES), named by URI:
 * "nbd://host[:port]/export", "nbd+unix:///export?socket=PATH" (nbds://, nbds+unix://:
 * TLS), which the daemon's --allow-store must allow, or "zero:SIZE" (demand-zero memory;
 * SIZE in bytes or with K, M, G, T, e.g. "zero:1G"). offset and length as for
 * pagerd_map_fd_prefetch; length must not be zero (the daemon checks the range against the
 * store's size: PAGERD_DAEMON_PAST_EOF). tracking: PAGERD_TRACK_AUTO or
 * PAGERD_TRACK_UFFD_WP (a store's PAGERD_SHARED region is tracked with uffd-wp only).
 * Needs the daemon's page cache. The first map of an export waits until the daemon has
 * connected to it (PAGERD_DAEMON_TIMEOUT or _IO_ERROR when it cannot); a URI the daemon
 * does not know or does not allow is PAGERD_DAEMON_BAD_DESCRIPTOR (EBADF); a daemon
 * without stores PAGERD_DAEMON_CAPABILITY (EIO). Unmap with pagerd_unmap. */
int pagerd_map_store(pagerd_conn* conn, const char* uri, uint64_t offset, uint64_t length, int access,
                     int tracking, int prefetch, pagerd_region* out);
/* Loads [addr, addr + length) of the connection's regions in the background; with wait
 * non-zero, returns once every page of it is loaded. */
int pagerd_prefetch(pagerd_conn* conn, const void* addr, uint64_t length, int wait);
/* PAGERD_SHARED regions are flushed before they are unmapped. */
int pagerd_unmap(pagerd_conn* conn, const pagerd_region* region);
/* Writes the dirty pages of a PAGERD_SHARED region (or of all of them) to the file, then
 * fdatasync. pages and bytes may be NULL. */
int pagerd_flush(pagerd_conn* conn, const pagerd_region* region, uint64_t* pages, uint64_t* bytes);
int pagerd_flush_all(pagerd_conn* conn, uint64_t* pages, uint64_t* bytes);
int pagerd_status_get(pagerd_conn* conn, pagerd_status* out);
int pagerd_ping(pagerd_conn* conn);
int pagerd_user_mode_only(const pagerd_conn* conn); /* 1, 0, or -1 for a NULL conn */

/* Errors. After a call returned -1, for the calling thread (a later success changes none
 * of them):
 *
 * pagerd_last_error(): the reason in words.
 *
 * pagerd_last_error_code(): always an errno value.
 *   PAGERD_ERROR_SYSTEM: the errno of the system call that failed (a missing file:
 *     ENOENT; no daemon at the socket: ENOENT or ECONNREFUSED) or of the library's own
 *     check (EINVAL for a NULL pointer, an unknown access mode or prefetch policy, an
 *     unaligned range, a region not mapped on this connection; EBADF for a descriptor that
 *     is not open; ENOTSUP for what the kernel or the daemon lacks); ETIMEDOUT when the
 *     daemon does not answer in time, ENOTCONN once the connection is lost (the call
 *     that first meets the closed connection may get ECONNRESET or EPIPE instead).
 *   PAGERD_ERROR_DAEMON: the daemon refused the request; its code becomes
 *     PAGERD_DAEMON_MALFORMED, _BAD_RANGE, _OVERLAP, _PAST_EOF, _NO_SUCH_REGION  EINVAL
 *     PAGERD_DAEMON_BAD_DESCRIPTOR                                        EBADF
 *     PAGERD_DAEMON_LIMIT (regions, bytes or clients; prefetch queue)      ENOMEM
 *     PAGERD_DAEMON_UNKNOWN_TYPE (a daemon older than the library)         ENOSYS
 *     PAGERD_DAEMON_NOT_READY, _CAPABILITY, _INTERNAL, _TIMEOUT, _IO_ERROR,
 *       and any code added later                                          EIO
 *   PAGERD_ERROR_PROTOCOL: the daemon's reply made no sense: EPROTO.
 *
 * pagerd_last_error_domain(): which of the three, or PAGERD_ERROR_NONE before the
 * thread's first failure.
 *
 * pagerd_last_daemon_error(): with PAGERD_ERROR_DAEMON, the daemon's own code (enum
 * pagerd_daemon_error, proto/PROTOCOL.md "Error codes"); otherwise 0. Its values overlap
 * errno's (PAGERD_DAEMON_UNKNOWN_TYPE is 2, as ENOENT is): never compare it with errno. */
enum pagerd_error_domain {
    PAGERD_ERROR_NONE = 0,
    PAGERD_ERROR_SYSTEM = 1,
    PAGERD_ERROR_DAEMON = 2,
    PAGERD_ERROR_PROTOCOL = 3
};
enum pagerd_daemon_error {
    PAGERD_DAEMON_MALFORMED = 1,
    PAGERD_DAEMON_UNKNOWN_TYPE = 2,
    PAGERD_DAEMON_BAD_DESCRIPTOR = 3,
    PAGERD_DAEMON_NOT_READY = 4,
    PAGERD_DAEMON_BAD_RANGE = 5,
    PAGERD_DAEMON_OVERLAP = 6,
    PAGERD_DAEMON_PAST_EOF = 7,
    PAGERD_DAEMON_LIMIT = 8,
    PAGERD_DAEMON_NO_SUCH_REGION = 9,
    PAGERD_DAEMON_CAPABILITY = 10,
    PAGERD_DAEMON_INTERNAL = 11,
    PAGERD_DAEMON_TIMEOUT = 12,
    PAGERD_DAEMON_IO_ERROR = 13
};
const char* pagerd_last_error(void);
int pagerd_last_error_code(void);
int pagerd_last_error_domain(void);
int pagerd_last_daemon_error(void);

#ifdef __cplusplus
}
#endif
#endif /* PAGERD_CLIENT_H */
