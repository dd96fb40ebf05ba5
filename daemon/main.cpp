// pagerd: the paging daemon. Runs in the foreground; see README.md and proto/PROTOCOL.md.
#include <spdlog/spdlog.h>

#include "config.hpp"
#include "listener.hpp"
#include "server.hpp"

using namespace pagerd::daemon;

int main(int argc, char** argv)
{
    // 1. Settings from the command line and the optional config file.
    ParsedConfig parsed = parse_config(argc, argv);
    if (!parsed.config) return parsed.exit_code;
    const Config& config = *parsed.config;

    // 2. Logging to stderr (the journal, under systemd).
    spdlog::set_level(spdlog::level::from_str(config.log_level));
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e [%^%l%$] %v");

    // 3. Signal mask before any thread exists.
    block_signals();

    // 4. The listening socket.
    auto listener = open_listener(config.socket_path, config.socket_mode);
    if (!listener) {
        spdlog::critical("{}", listener.error().message);
        return 1;
    }

    // 5. Workers, then serve until SIGTERM / SIGINT.
    try {
        Server server(config, std::move(listener.value()));
        return server.run();
    } catch (const std::exception& e) {
        spdlog::critical("cannot start: {}", e.what());
        return 1;
    }
}
