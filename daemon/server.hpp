// The control thread: accepts connections and hands each to the least loaded worker;
// stops everything on SIGTERM / SIGINT.
#pragma once
#include <functional>
#include <memory>
#include <optional>
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
    // reload: reads the configuration again (SIGHUP); nullopt when it is invalid.
    using Reload = std::function<std::optional<Config>()>;
    Server(const Config& config, Listener listener, CachePool& cache, Reload reload = {});
    // Clients an earlier daemon left in the descriptor store; call before run().
    void resume(std::vector<std::unique_ptr<Client>> clients);
    ~Server();
    int run();  // returns the process exit code

private:
    void accept_all();
    void write_back_caches();  // stopping under the descriptor store: Shared writes to the files
    Worker& least_loaded();
    void tick();      // status and watchdog, about every second
    void reload();    // SIGHUP
    std::string status_line() const;
    bool workers_turning(Clock::duration within) const;

    Reload m_reload;
    Clock::time_point m_last_tick{};
    bool m_watchdog_withheld = false;

    const Config& m_config;
    Listener m_listener;
    Context m_ctx;
    std::vector<std::unique_ptr<Worker>> m_workers;
};

}  // namespace pagerd::daemon
