// pagerd: the paging daemon. Runs in the foreground; see README.md and proto/PROTOCOL.md.
#include <spdlog/spdlog.h>

#include "config.hpp"
#include "listener.hpp"
#include "server.hpp"
#include "systemd.hpp"

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

    // 4. The listening socket: the one systemd passes, else our own at --socket.
    Listener listener;
    if (auto passed = systemd::take_listening_socket()) {
        listener = adopt_listener(std::move(*passed));
    } else {
        auto opened = open_listener(config.socket_path, config.socket_mode);
        if (!opened) {
            spdlog::critical("{}", opened.error().message);
            return 1;
        }
        listener = std::move(opened.value());
    }

    // 5. Workers, then serve until SIGTERM / SIGINT; SIGHUP reads the config file again.
    auto reload = [argc, argv]() -> std::optional<Config> { return parse_config(argc, argv).config; };
    try {
        Server server(config, std::move(listener), reload);
        return server.run();
    } catch (const std::exception& e) {
        spdlog::critical("cannot start: {}", e.what());
        return 1;
    }
}
