// pagerd: the paging daemon. Runs in the foreground; see README.md and proto/PROTOCOL.md.
#include <spdlog/spdlog.h>

#include "cache.hpp"
#include "config.hpp"
#include "listener.hpp"
#include "server.hpp"
#include "fdstore.hpp"
#include "systemd.hpp"
#include <unistd.h>

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

    // 4. The listening socket: the one systemd passes, else our own at --socket; and the
    //    clients an earlier daemon kept in systemd's descriptor store.
    //    The page cache first: restored regions map caches kept in the store.
    const auto page = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
    CachePool cache(config.memory_max ? config.memory_max : CachePool::default_budget(), page);
    if (!cache.unavailable().empty()) spdlog::warn("no page cache: {}", cache.unavailable());
    // Pages read ahead wait on probation until the client gets to them: two windows.
    cache.set_min_probation(2 * std::max<std::uint64_t>(config.readahead_max_bytes, config.staging_buffer_bytes()));
    fdstore::set_enabled(config.fd_store);
    auto passed = systemd::take_passed();
    auto resumed = fdstore::restore(passed.stored, page, cache);
    for (const auto& [name, fd] : passed.stored) spdlog::warn("descriptor store: {} belongs to no client; closed", name);
    Listener listener;
    if (passed.listening) {
        listener = adopt_listener(std::move(*passed.listening));
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
        Server server(config, std::move(listener), cache, reload);
        server.resume(std::move(resumed));
        return server.run();
    } catch (const std::exception& e) {
        spdlog::critical("cannot start: {}", e.what());
        return 1;
    }
}
