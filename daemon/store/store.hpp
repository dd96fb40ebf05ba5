// Where a region's bytes live. The daemon reads pages from a store into its page cache,
// and writes Shared regions' dirty pages back to it. Kinds: files (file_store), NBD
// exports (nbd_store), demand-zero memory (zero_store). Every kind answers the same calls,
// so the fault path, the cache and write-back never ask which kind they have.
//
// Reads go one of two ways. A local store (a file) is read through the worker's io_uring:
// read_now() and prep_read(). A remote store gives each worker a Channel instead
// (open_channel()): the worker polls the channel's sockets on its ring and the channel
// completes reads on the worker's thread, so neither way ever blocks the fault path.
//
// Threads: read_now(), prep_read() and a channel's calls run on the worker that owns the
// region; write() and sync() on a writer thread (they may wait as long as the device or
// the network takes). The hints never wait.
#pragma once
#include <liburing.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
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

// Figures of one store (pagerctl status), kept by whoever reads or writes it.
struct Stats {
    std::atomic<std::uint32_t> connections{0}, inflight{0};
    std::atomic<std::uint64_t> reads{0}, read_bytes{0}, read_errors{0};
    std::atomic<std::uint64_t> retries{0}, timeouts{0}, reconnects{0};
    std::atomic<std::uint64_t> writes{0}, write_bytes{0}, write_errors{0};
    std::atomic<std::uint64_t> read_ns{0}, read_max_ns{0};  // summed over reads; the longest
    void read_done(std::uint64_t ns)
    {
        read_ns.fetch_add(ns, std::memory_order_relaxed);
        std::uint64_t max = read_max_ns.load(std::memory_order_relaxed);
        while (ns > max && !read_max_ns.compare_exchange_weak(max, ns, std::memory_order_relaxed)) {
        }
    }
};

using Clock = std::chrono::steady_clock;

// A poll on the worker's ring for a channel's socket: ready() runs on the worker when it
// fires (revents, or -errno: -ECANCELED after Loop::cancel()).
class Watch {
public:
    virtual ~Watch() = default;
    virtual void ready(int revents) = 0;
    bool armed = false;  // kept by the Loop
};

// What a worker offers the channels of the remote stores its clients read.
class Loop {
public:
    virtual ~Loop() = default;
    virtual void poll(Watch& w, int fd, unsigned events) = 0;  // once; w must not be armed
    virtual void cancel(Watch& w) = 0;                          // w.ready(-ECANCELED) follows
    // A read started with Channel::read() is over: res as read(2) (bytes, 0 at the end,
    // -errno). Runs the completion after the channel's call returns, never inside it.
    virtual void complete(void* token, int res) = 0;
    // Thread-safe: the worker calls every channel's tick() soon (a connection made by
    // another thread is ready to be taken).
    virtual void wake() = 0;
};

// One worker's reads of one remote store. All calls on the worker's thread.
class Channel {
public:
    virtual ~Channel() = default;
    // Reads [off, off + len) into buf, completing with Loop::complete(token, res) within
    // the store's deadline (-ETIMEDOUT past it). buf stays the caller's until then only.
    virtual void read(void* buf, unsigned len, std::uint64_t off, void* token) = 0;
    // Deadlines, reconnections, connections made meanwhile (at least every 200 ms).
    virtual void tick(Clock::time_point now) = 0;
    // No read in flight or waiting.
    virtual bool idle() const = 0;
    // Starts closing its connections (no read may follow; reads not done fail);
    // closed() once no poll is armed, no read is left and no connection is being made:
    // the channel may be destroyed then.
    virtual void shutdown() = 0;
    virtual bool closed() const = 0;
};

class Store {
public:
    virtual ~Store() = default;
    virtual const char* kind() const = 0;  // "file", "nbd", "zero"
    // The store's name for people (a URI; a file: "file:<dev>:<ino>").
    virtual std::string name() const = 0;
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

    // A remote store: this worker's channel, through which it reads instead of
    // read_now() and prep_read() (null: a local store, read through the ring). The caller
    // keeps the store alive while the channel lives; the channel holds no reference.
    virtual std::unique_ptr<Channel> open_channel(Loop&) { return nullptr; }
    // False: write-back calls write() rather than prep_write().
    virtual bool ring_writes() const { return true; }
    Stats& stats() const { return m_stats; }
    // References held by workers' channels (each worker keeps the store of its channel):
    // the store is in use by nobody else when use_count() equals this.
    std::atomic<long>& channel_holders() const { return m_channel_holders; }

    // The descriptor that a restart through the descriptor store keeps (-1: none).
    virtual int descriptor() const = 0;
    // The same store, opened anew for writing by the daemon (its own open file
    // description: no client can change its flags); null with why when it cannot be.
    virtual std::shared_ptr<Store> reopen_for_writing(std::string& why) const = 0;

private:
    mutable Stats m_stats;
    mutable std::atomic<long> m_channel_holders{0};
};

}  // namespace pagerd::daemon::store
