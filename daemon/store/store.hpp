// Where a region's bytes live. The daemon reads pages from a store into its page cache,
// and writes Shared regions' dirty pages back to it. Files are the only kind today; every
// kind answers the same calls, so the fault path, the cache and write-back never ask
// which kind they have.
//
// Threads: read_now() and prep_read() run on the worker that owns the region (the fault
// path: neither ever waits for the device); write() and sync() on a writer thread (they
// may wait as long as the device takes). The hints never wait.
#pragma once
#include <liburing.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

namespace pagerd::daemon::store {

// Which page cache a store shares: regions whose stores have the same identity (the same
// file: device and inode) share one.
struct Identity {
    std::uint64_t a = 0, b = 0;
    friend bool operator==(const Identity&, const Identity&) = default;
    friend auto operator<=>(const Identity&, const Identity&) = default;
};

class Store {
public:
    virtual ~Store() = default;
    virtual const char* kind() const = 0;  // "file"
    virtual Identity identity() const = 0;
    // Its size in bytes now (a file may grow or shrink while mapped); -errno on failure.
    virtual std::int64_t size() const = 0;
    virtual bool writable() const = 0;  // write() can work (opened for writing)

    // Reads what can be had without waiting for a device (data a cache holds): the bytes
    // read (0: the end of the store), or -1 when the read must go through prep_read().
    virtual ssize_t read_now(void* buf, std::uint64_t len, std::uint64_t off) = 0;
    // Prepares an asynchronous read on the worker's io_uring; its completion's res is what
    // read(2) returns (bytes, 0 at the end, -errno). fixed: buf lies in the ring's
    // registered buffer 0. background: nobody waits for it yet (io_uring may hand it to its
    // own workers).
    virtual void prep_read(io_uring_sqe* sqe, void* buf, unsigned len, std::uint64_t off, bool fixed,
                           bool background) = 0;

    // Write-back: like pwrite(2) (bytes written or -1 with errno), then sync() for
    // durability (0 or an errno).
    virtual ssize_t write(const void* buf, std::uint64_t len, std::uint64_t off) = 0;
    virtual int sync() = 0;
    // The same write, prepared on a writer's io_uring (completion res as pwrite(2)).
    virtual void prep_write(io_uring_sqe* sqe, const void* buf, unsigned len, std::uint64_t off) = 0;

    // Hints: the range will be read soon; the range is in the daemon's page cache now and
    // need not stay cached anywhere else.
    virtual void will_need(std::uint64_t off, std::uint64_t len) = 0;
    virtual void loaded(std::uint64_t off, std::uint64_t len) = 0;

    // The descriptor that a restart through the descriptor store keeps (-1: none).
    virtual int descriptor() const = 0;
    // The same store, opened anew for writing by the daemon (its own open file
    // description: no client can change its flags); null with why when it cannot be.
    virtual std::shared_ptr<Store> reopen_for_writing(std::string& why) const = 0;
};

}  // namespace pagerd::daemon::store
