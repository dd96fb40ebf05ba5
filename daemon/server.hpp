// The control thread: accepts connections and hands each to the least loaded worker;
// stops everything on SIGTERM / SIGINT.
#pragma once
#include <memory>
#include <vector>

#include "config.hpp"
#include "listener.hpp"
#include "worker.hpp"

namespace pagerd::daemon {

// Blocks the signals the server takes through a signalfd, and ignores SIGPIPE. Call
// before any thread starts so that every thread inherits the mask.
void block_signals();

class Server {
public:
    Server(const Config& config, Listener listener);
    ~Server();
    int run();  // returns the process exit code

private:
    void accept_all();
    Worker& least_loaded();

    const Config& m_config;
    Listener m_listener;
    Context m_ctx;
    std::vector<std::unique_ptr<Worker>> m_workers;
};

}  // namespace pagerd::daemon
