// Connection internals shared by connection.cpp and monitor.cpp.
#pragma once
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fork.hpp"
#include "pagerd/client.hpp"
#include "pagerd/proto/messages.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::libclient {

// A failed system call as an Error: errno, and what failed with the system's words.
inline Error sys_error(const std::string& what, int err = errno)
{
    return Error::system(err, what + ": " + std::strerror(err));
}

// prefetch.cpp: policy names on the wire
proto::Prefetch to_wire(Prefetch p);
Prefetch from_wire(proto::Prefetch p);
// EINVAL for a value outside the enum; ENOTSUP for a policy other than Sequential when the
// daemon lacks the PREFETCH capability.
Result<void> check_prefetch(Prefetch p, std::uint64_t daemon_caps);

// A region and what the library keeps for it.
struct Mapping {
    Region region;
    void* bitmap = nullptr;        // Shared: the dirty bitmap (tail of the memfd)
    std::size_t bitmap_bytes = 0;
    int segv_slot = -1;            // Tracking::Sigsegv: the handler's slot
    // Shared regions of a file in the daemon's page cache: a copy of the file's descriptor
    // and the region's offset in it, with which a forked child flushes (fork.cpp).
    std::shared_ptr<util::UniqueFd> file;
    std::uint64_t file_offset = 0;
    bool inherited() const { return bitmap == nullptr && segv_slot < 0; }  // a child has it too
};

struct Connection::Impl {
    util::UniqueFd sock;
    util::UniqueFd uffd;
    std::uint64_t uffd_features = 0;
    std::uint64_t uffd_available = 0;  // features the kernel offers
    bool user_mode_only = false;
    std::mutex async_mutex;            // guards the creation of the two below
    util::UniqueFd async_uffd;         // created with the first Async region
    util::UniqueFd pagemap;            // /proc/self/pagemap, for PAGEMAP_SCAN
    std::uint64_t daemon_caps = 0;
    std::uint64_t page_size = 4096;
    int timeout_ms = 10000;

    std::mutex request_mutex;  // one request in flight at a time
    std::uint32_t next_request_id = 1;

    // Held from mmap to the daemon's MAPPED, and from munmap to its reply to UNMAP: the
    // daemon then never sees a new region before the unmap event of an old one at the
    // same address.
    std::mutex layout_mutex;
    std::mutex regions_mutex;
    std::map<std::uint64_t, Mapping> regions;  // by id
    std::mutex flush_mutex;  // one flush at a time: collecting is not re-entrant
    int writeback_interval_ms = 0;

    std::atomic<bool> alive{true};
    // Set in a child made by fork() (fork.cpp): this connection is the parent's; the child
    // has its regions (served by the daemon through the child's own userfaultfd) but not
    // its socket. unmap, forget, flush and find work there without the daemon.
    std::atomic<bool> forked{false};
    pid_t owner = ::getpid();
    util::UniqueFd stop_fd;  // eventfd that ends the monitor thread
    std::thread monitor;

    // Sends one request and waits for its reply; an ERROR reply becomes an Error.
    // wait_ms: the deadline; -1 waits as long as the daemon lives (FLUSH of a big region).
    // fds_out: receives the descriptors the reply carries (else they are closed).
    Result<proto::Message> request(proto::Body body, std::span<const int> fds = {}, int wait_ms = 0,
                                   std::vector<util::UniqueFd>* fds_out = nullptr);
    // ReadOnly and PrivateWritable regions backed by the daemon's page cache (CACHE).
    bool cache_usable() const;
    // fd: a file (MAP); else uri: a store the daemon reaches itself (MAP_STORE).
    Result<Region> map_cached(int fd, const MapOptions& o, const std::string* uri = nullptr);

    Result<Mapping> lookup(const Region& region);  // a region of this connection, by id and address
    std::vector<Mapping> shared_mappings();        // a snapshot of the Shared ones

    // shared.cpp: Shared regions
    Result<Tracking> choose_tracking(Tracking wanted);
    Result<void> ensure_async_uffd();
    Result<Region> map_shared(int fd, const MapOptions& o);
    Result<FlushResult> flush_mapping(const Mapping& m);  // caller holds flush_mutex
    void release_mapping(Mapping& m);                       // handler slot, bitmap mapping

    // A region whose faults a forked child's daemon would not serve (a daemon without
    // capability FORK, or a kernel without UFFD_FEATURE_EVENT_FORK) is not inherited: the
    // child would read zeros where data belongs.
    void keep_from_child(void* addr, std::size_t len) const
    {
        if (!(uffd_features & UFFD_FEATURE_EVENT_FORK)) ::madvise(addr, len, MADV_DONTFORK);
    }
    // fork.cpp: the registry of connections that fork() handlers walk, and what a forked
    // child does instead of asking the daemon.
    void enlist();
    void delist();
    Result<FlushResult> child_flush(const Mapping& m);  // pwrite of the region's bytes + fdatasync

    // monitor.cpp: watches the daemon connection; when it is lost, answers faults on
    // unloaded pages with SIGBUS so that no thread waits forever.
    void start_monitor();
    void stop_monitor();
    void monitor_loop();
    void serve_orphaned_faults();
    void background_writeback();
};

}  // namespace pagerd::libclient
