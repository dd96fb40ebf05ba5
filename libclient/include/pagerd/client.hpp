// libclient C++ API: connect to pagerd, map file regions that are paged in on first touch.
// Every call returns errors as values (pagerd::Result); nothing here throws on bad input,
// exits or aborts. Thread-safe: one Connection may be used from many threads.
//
// Errors: an Error (pagerd/util/result.hpp) is a domain, a code in that domain's numbering
// and a message. The numberings overlap (2 is ENOENT and UNKNOWN_TYPE), so test with
// error.is_errno(ENOENT) or error.is_daemon(DaemonError::PAST_EOF), never the code alone.
//   ErrorDomain::System    an errno value: a system call failed (map_file of a missing file:
//                          ENOENT; no daemon at the socket: ENOENT or ECONNREFUSED), or the
//                          library refused the arguments (EINVAL, EBADF, ENOTSUP, ...). Also:
//                          ETIMEDOUT (no answer within ConnectOptions::timeout_ms),
//                          ENOTCONN once the connection is lost (the call that first meets
//                          the closed connection may get ECONNRESET or EPIPE instead).
//   ErrorDomain::Daemon    a DaemonError: the daemon refused the request (its ERROR reply;
//                          the message is "pagerd: " + its text), e.g. PAST_EOF, OVERLAP,
//                          LIMIT, NO_SUCH_REGION; CAPABILITY also when its WELCOME lacks a
//                          capability the caller requires.
//   ErrorDomain::Protocol  a DaemonError naming what is wrong with a reply that makes no
//                          sense (MALFORMED, UNKNOWN_TYPE, BAD_DESCRIPTOR): a daemon speaking
//                          another protocol.
// to_errno() is the errno the C API and the UMap API report for each of them.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pagerd/util/result.hpp"

namespace pagerd::libclient {

// Error::code in ErrorDomain::Daemon and ErrorDomain::Protocol: the protocol's error codes
// (proto::ErrorCode, proto/PROTOCOL.md#error-codes), same names, same values.
enum class DaemonError : std::uint32_t {
    MALFORMED = 1,
    UNKNOWN_TYPE = 2,
    BAD_DESCRIPTOR = 3,
    NOT_READY = 4,
    BAD_RANGE = 5,
    OVERLAP = 6,
    PAST_EOF = 7,
    LIMIT = 8,
    NO_SUCH_REGION = 9,
    CAPABILITY = 10,
    INTERNAL = 11,
    TIMEOUT = 12,
    IO_ERROR = 13,
};
const char* daemon_error_name(DaemonError code);  // "PAST_EOF", ... or "?"

// The errno the C API (pagerd_last_error_code) and the UMap API report for an error:
//   System                                                        its code (EIO if not > 0)
//   Daemon MALFORMED, BAD_RANGE, OVERLAP, PAST_EOF, NO_SUCH_REGION EINVAL
//   Daemon BAD_DESCRIPTOR                                         EBADF
//   Daemon LIMIT                                                  ENOMEM
//   Daemon UNKNOWN_TYPE (a daemon older than the library)         ENOSYS
//   Daemon NOT_READY, CAPABILITY, INTERNAL, TIMEOUT, IO_ERROR,    EIO
//          and any code added later
//   Protocol                                                      EPROTO
int to_errno(const Error& error);

// Socket used when neither the argument nor $PAGERD_SOCKET names one.
inline constexpr const char* k_default_socket = "/run/pagerd/pagerd.sock";

// argument if non-empty, else $PAGERD_SOCKET if set and non-empty, else k_default_socket.
std::string resolve_socket_path(const std::string& argument);

enum class Access {
    ReadOnly,         // PROT_READ; writes raise SIGSEGV
    PrivateWritable,  // copy-on-write: writes stay in this process, never reach the file
    Shared,           // writes reach the file on flush (like MAP_SHARED + msync(MS_SYNC)),
                      // and when the region is unmapped or this process dies
};

// How writes to a Shared region are noticed (docs/writes.md).
enum class Tracking {
    Auto,     // UffdWp, else Sigsegv: both keep every write of a client killed by SIGKILL
    UffdWp,   // userfaultfd write-protect: the first write to a page faults to the daemon
    Sigsegv,  // in-process: the region is PROT_READ; libclient's SIGSEGV handler marks pages
    Async,    // UFFD_FEATURE_WP_ASYNC (6.7+): the kernel records writes; flush collects them
              // (cheapest; a SIGKILLed client loses its writes since its last flush)
};
const char* tracking_name(Tracking t);  // "auto", "uffd-wp", "sigsegv", "async"

// What the daemon loads besides the pages a fault needs (chosen per region at map time).
enum class Prefetch {
    Sequential,  // read-ahead: a window that grows while faults follow each other (default)
    None,        // the faulting block only: for random access
    All,         // the whole region, in the background, faults first (post-copy style)
};
const char* prefetch_name(Prefetch p);  // "sequential", "none", "all"
std::optional<Prefetch> parse_prefetch(std::string_view name);

// Fault service times in log-scale buckets: bucket 0 under 2 µs, bucket i (1..14)
// [2^i, 2^(i+1)) µs, bucket 15 the rest (proto::latency_bucket()).
inline constexpr std::size_t k_latency_buckets = 16;
using LatencyHistogram = std::array<std::uint64_t, k_latency_buckets>;

struct FlushResult {
    std::uint64_t pages = 0;  // pages written to the file
    std::uint64_t bytes = 0;
};

struct ConnectOptions {
    std::string socket_path;          // see resolve_socket_path()
    std::string name;                 // shown in the daemon's log (at most 64 bytes)
    std::uint64_t required_caps = 0;  // proto::cap bits the caller needs beyond the basics
    int timeout_ms = 10000;           // deadline of each request to the daemon
    int writeback_interval_ms = 0;    // > 0: flush every Shared region this often
};

struct MapOptions {
    std::uint64_t offset = 0;  // file offset, multiple of the page size
    std::uint64_t length = 0;  // bytes, non-zero multiple of the page size, within the file
                               // rounded up to a whole page
    Access access = Access::ReadOnly;
    Tracking tracking = Tracking::Auto;  // Shared regions only
    void* addr = nullptr;  // non-null: map exactly here, replacing what is there (MAP_FIXED)
    Prefetch prefetch = Prefetch::Sequential;
};

struct Region {
    std::uint64_t id = 0;
    void* addr = nullptr;
    std::size_t size = 0;
    Access access = Access::ReadOnly;
    Tracking tracking = Tracking::Auto;  // Shared regions: the strategy in use
};

// One file's page cache in the daemon (Connection::caches()).
struct CacheInfo {
    std::uint64_t dev = 0, ino = 0;  // the file (st_dev, st_ino)
    std::uint64_t size = 0;          // bytes the cache spans
    std::uint64_t resident = 0;      // bytes it holds now
    std::uint32_t clients = 0;       // connections that map the file
    std::uint32_t regions = 0;       // region pieces that map it
    std::uint64_t dirty = 0;         // bytes of it written by clients and not yet to the file
};

// One store the daemon reads (Connection::stores()): a file, an NBD export, zero memory.
struct StoreInfo {
    std::string kind;  // "file", "nbd", "zero"
    std::string uri;   // its name (a file: "file:<dev>:<ino>")
    std::uint64_t size = 0;
    std::uint32_t connections = 0;  // open now
    std::uint32_t inflight = 0;     // requests in flight now
    std::uint64_t reads = 0, read_bytes = 0, read_errors = 0;
    std::uint64_t retries = 0, timeouts = 0, reconnects = 0;
    std::uint64_t writes = 0, write_bytes = 0, write_errors = 0;
    std::uint64_t read_latency_avg_ns = 0, read_latency_max_ns = 0;
};

// One region of any client, as `pagerctl status` lists them.
struct RegionInfo {
    std::uint64_t client = 0;  // the daemon's serial number of the connection
    std::uint32_t pid = 0;
    std::uint64_t id = 0;
    std::uint64_t length = 0;
    Access access = Access::ReadOnly;
    Tracking tracking = Tracking::Auto;  // Auto for regions that are not Shared
    std::uint64_t dirty_pages = 0;
    Prefetch prefetch = Prefetch::Sequential;
    std::uint64_t faults = 0;  // served in the region (all its pieces)
    std::uint64_t latency_p50_ns = 0;
    std::uint64_t latency_p99_ns = 0;
    std::uint64_t prefetch_pending = 0;  // bytes its fill and prefetches have yet to load
    LatencyHistogram latency_histogram{};
};

struct Status {
    std::string version;
    std::uint64_t uptime_ms = 0;
    std::uint32_t workers = 0;
    std::uint32_t clients = 0;
    std::uint64_t regions = 0;
    std::uint64_t mapped_bytes = 0;
    std::uint64_t faults = 0;
    std::uint64_t pages_installed = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t sigbus_faults = 0;
    std::uint64_t latency_p50_ns = 0;
    std::uint64_t latency_p99_ns = 0;
    std::uint64_t latency_max_ns = 0;
    std::uint32_t user_mode_only_clients = 0;
    bool this_client_user_mode_only = false;  // this connection's userfaultfd mode
    std::uint64_t this_client_regions = 0;
    std::uint64_t pages_prefetched = 0;  // installed ahead of any fault
    // The daemon's page cache (regions mapped through it: Connection::map_* of ReadOnly and
    // PrivateWritable regions when the daemon has it, and of Shared regions tracked with
    // UffdWp when it has CACHE_SHARED). Bytes now; pages since start.
    std::uint64_t cache_budget = 0;     // --memory-max
    std::uint64_t cache_bytes = 0;      // resident
    std::uint64_t cache_files = 0;      // caches open (one per file)
    std::uint64_t cache_loads = 0;      // pages loaded from files
    std::uint64_t cache_hits = 0;       // pages mapped for a client from the cache, no load
    std::uint64_t cache_evictions = 0;  // pages dropped to stay within the budget
    std::uint64_t cache_refaults = 0;   // loads of pages evicted lately
    std::uint64_t cache_dirty_bytes = 0;  // written by clients into the cache, not yet to their files
    std::uint64_t cache_writebacks = 0;   // pages written back to their files so that the cache could evict them
    LatencyHistogram latency_histogram{};
};

class Connection {
public:
    static Result<std::unique_ptr<Connection>> connect(const ConnectOptions& options = {});
    ~Connection();  // unmaps the regions still mapped, then disconnects
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    Result<Region> map_file(const std::string& path, const MapOptions& options);
    Result<Region> map_fd(int fd, const MapOptions& options);  // fd stays the caller's
    // A region of a store the daemon reaches itself (capability STORES), named by URI:
    // "nbd://host[:port]/export", "nbd+unix:///export?socket=PATH" (nbds: TLS), which the
    // daemon's --allow-store must allow, or "zero:SIZE" (demand-zero memory, e.g. zero:1G).
    // options.length: non-zero (the daemon checks it against the store's size). Needs the daemon's page
    // cache (Shared: with UffdWp tracking). The first map of an export waits for the
    // daemon to connect to it.
    Result<Region> map_store(const std::string& uri, const MapOptions& options);
    Result<void> unmap(const Region& region);  // Shared regions are flushed first
    // Drops the library's record of the region and asks the daemon to drop what is left of
    // it; never touches memory (for callers that munmap'ed it, or parts of it, themselves).
    Result<void> forget(const Region& region);
    // Writes the region's dirty pages to its file, then fdatasync. Thread-safe.
    Result<FlushResult> flush(const Region& region);
    Result<FlushResult> flush_all();  // every Shared region of this connection
    // Loads [addr, addr + length) of this connection's regions in the background (parts
    // outside every region are ignored; pages already there stay as they are). Returns
    // once queued, or with `wait` once every page is loaded (an earlier prefetch covering
    // the range, such as a Prefetch::All fill, is waited for rather than repeated).
    // addr and length: multiples of the page size. wait_ms: -1 waits as long as it takes.
    // While a prefetch waits, the connection's other requests (map, unmap, status) wait too.
    Result<void> prefetch(const void* addr, std::size_t length, bool wait = false, int wait_ms = -1);
    // The regions of this connection, by address (for APIs that know only the address).
    Result<Region> find(const void* addr) const;
    Result<Status> status();
    Result<std::vector<RegionInfo>> regions();  // every client's regions
    // The daemon's page caches, one per file (a caller that is not root or the daemon's
    // user sees those of files its own uid maps).
    Result<std::vector<CacheInfo>> caches();
    // The stores the daemon reads (same visibility as caches()).
    Result<std::vector<StoreInfo>> stores();
    Result<void> ping();

    // True when the kernel only gave a userfaultfd that handles faults from user mode:
    // then read(2)/write(2) with unloaded region memory fail with EFAULT.
    bool user_mode_only() const;
    std::uint64_t daemon_caps() const;
    // False once the daemon connection is lost; from then on faults on unloaded pages of
    // this connection's regions raise SIGBUS instead of blocking.
    bool daemon_alive() const;
    // True in a child made by fork() from the process that connected. The child keeps the
    // regions (ReadOnly, PrivateWritable and Shared ones in the daemon's page cache; not
    // Shared ones with Sigsegv or Async tracking): the daemon serves its faults. Here,
    // unmap, forget, find and flush work (flush writes the whole region to the file with
    // pwrite, then fdatasync); every other call fails with ENOTCONN: connect anew.
    bool forked() const;
    // Whether a child made by fork() keeps this connection's ReadOnly, PrivateWritable and
    // page-cache Shared regions: the daemon has capability FORK and the kernel granted
    // UFFD_FEATURE_EVENT_FORK, which needs CAP_SYS_PTRACE. When false, every region is
    // MADV_DONTFORK: not in a child at all (SIGSEGV there, never zeros).
    bool fork_inherits() const;

    struct Impl;

private:
    explicit Connection(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> m_impl;
};

}  // namespace pagerd::libclient
