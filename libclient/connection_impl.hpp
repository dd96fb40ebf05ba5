// Connection internals shared by connection.cpp and monitor.cpp.
#pragma once
#include <atomic>
#include <map>
#include <mutex>
#include <span>
#include <thread>

#include "pagerd/client.hpp"
#include "pagerd/proto/messages.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::libclient {

struct Connection::Impl {
    util::UniqueFd sock;
    util::UniqueFd uffd;
    std::uint64_t uffd_features = 0;
    bool user_mode_only = false;
    std::uint64_t daemon_caps = 0;
    std::uint64_t page_size = 4096;
    int timeout_ms = 10000;

    std::mutex request_mutex;  // one request in flight at a time
    std::uint32_t next_request_id = 1;

    std::mutex regions_mutex;
    std::map<std::uint64_t, Region> regions;  // by id

    std::atomic<bool> alive{true};
    util::UniqueFd stop_fd;  // eventfd that ends the monitor thread
    std::thread monitor;

    // Sends one request and waits for its reply; an ERROR reply becomes an Error.
    Result<proto::Message> request(proto::Body body, std::span<const int> fds = {});

    // monitor.cpp: watches the daemon connection; when it is lost, answers faults on
    // unloaded pages with SIGBUS so that no thread waits forever.
    void start_monitor();
    void stop_monitor();
    void monitor_loop();
    void serve_orphaned_faults();
};

}  // namespace pagerd::libclient
