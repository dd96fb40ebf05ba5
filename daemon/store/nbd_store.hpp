// The NBD store: an export of an NBD server, read and written through libnbd. The daemon
// makes every connection itself (clients never link libnbd), and only to URIs that the
// operator allows (--allow-store; uri.hpp).
//
// Reads: each worker reads through a channel of its own (nbd_channel.cpp): a few
// connections, libnbd's asynchronous API, their sockets polled on the worker's io_uring,
// requests split at the server's maximum. A read the server fails is retried once; a read
// on a connection that died is retried on a new one; a read not done within the deadline
// (--store-timeout-ms) fails with ETIMEDOUT, and the faulting threads get SIGBUS. Reads
// land in the worker's staging buffer directly; a read past its deadline is failed only
// once libnbd has let go of it (its connection is closed for that), so no read can ever
// write into a buffer that has been handed to another load.
//
// Writes (write-back of Shared regions, on a writer thread): one connection of the
// store's, libnbd's synchronous API (NBD WRITE), and FLUSH for durability when the server
// offers it.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "store.hpp"

struct nbd_handle;

namespace pagerd::daemon::store {

struct NbdOptions {
    unsigned connections = 2;  // per worker that reads the export
    std::chrono::milliseconds timeout{30000};  // a read, or a connection, not done by then fails
};

// A new connection to uri, made within `timeout` (it waits: never on a worker); null
// with why (timed_out: the deadline passed, and the socket is closed).
nbd_handle* nbd_connect(const std::string& uri, std::chrono::milliseconds timeout, std::string& why,
                        bool& timed_out);

class NbdStore final : public Store, public std::enable_shared_from_this<NbdStore> {
public:
    // Connects to learn the export's size and limits (blocking, up to options.timeout:
    // never call it on a worker); null with why (timed_out: the deadline passed).
    static std::shared_ptr<NbdStore> open(const std::string& uri, const NbdOptions& options, std::string& why,
                                          bool& timed_out);
    ~NbdStore() override;
    // One store per URI while anything uses it, with its page cache: the store open for
    // uri, or null.
    static std::shared_ptr<NbdStore> find(const std::string& uri);
    // find(), else open() (blocking) and remembered.
    static std::shared_ptr<NbdStore> open_shared(const std::string& uri, const NbdOptions& options, std::string& why,
                                                 bool& timed_out);

    const char* kind() const override { return "nbd"; }
    std::string name() const override { return m_uri; }
    Identity identity() const override { return m_identity; }
    std::int64_t size() const override { return static_cast<std::int64_t>(m_size); }
    bool writable() const override { return !m_read_only; }
    ssize_t read_now(void*, std::uint64_t, std::uint64_t) override { return -1; }
    void prep_read(io_uring_sqe* sqe, void* buf, unsigned len, std::uint64_t off, bool fixed, bool background) override;
    ssize_t write(const void* buf, std::uint64_t len, std::uint64_t off) override;
    int sync() override;
    void prep_write(io_uring_sqe* sqe, const void* buf, unsigned len, std::uint64_t off) override;
    bool ring_writes() const override { return false; }
    void will_need(std::uint64_t, std::uint64_t) override {}
    void loaded(std::uint64_t, std::uint64_t) override {}
    int descriptor() const override { return -1; }
    std::shared_ptr<Store> reopen_for_writing(std::string& why) const override;
    std::unique_ptr<Channel> open_channel(Loop& loop) override;

    const std::string& uri() const { return m_uri; }
    const NbdOptions& options() const { return m_options; }
    std::uint64_t max_request() const { return m_max_request; }

private:
    NbdStore() = default;
    int command(std::int64_t cookie);
    std::string m_uri;
    NbdOptions m_options;
    Identity m_identity;
    std::uint64_t m_size = 0;
    std::uint64_t m_max_request = 32u << 20;  // the server's largest request (NBD's default: 32 MiB)
    bool m_read_only = true;
    bool m_can_flush = false;
    std::mutex m_write_mutex;          // one write-back at a time on the write connection
    nbd_handle* m_write = nullptr;     // the connection open() made, kept for writes
};

}  // namespace pagerd::daemon::store
