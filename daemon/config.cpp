#include "config.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "pagerd/proto/constants.hpp"

namespace pagerd::daemon {

std::string version_string() { return std::string("pagerd ") + PAGERD_VERSION; }

ParsedConfig parse_config(int argc, char** argv)
{
    Config c;
    CLI::App app{"pagerd: userfaultfd paging daemon. Serves page faults of client regions from "
                 "files, in the foreground."};
    app.set_version_flag("--version", version_string());
    app.set_config("--config", "", "Read the same options from a TOML/INI file");
    app.allow_config_extras(false);  // a misspelt key in the file is an error, not ignored
    app.add_option("--socket", c.socket_path,
                   "Listening socket path (default: $PAGERD_SOCKET, else " +
                       std::string(proto::k_default_socket_path) + ")");
    app.add_option("--workers", c.workers, "Worker threads (0: one per CPU)")
        ->check(CLI::Range(0u, 256u));
    app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error, critical, off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
    app.add_option("--socket-mode", c.socket_mode, "Permission bits of the socket (octal)")
        ->transform([](std::string s) { return std::to_string(std::stoul(s, nullptr, 8)); });
    app.add_option("--max-clients", c.max_clients, "Connections served at once")
        ->check(CLI::Range(1u, 1000000u));
    app.add_option("--max-regions-per-client", c.max_regions_per_client, "Regions per connection")
        ->check(CLI::Range(1u, 1000000u));
    app.add_option("--max-mapped-bytes-per-client", c.max_mapped_bytes_per_client,
                   "Bytes mapped per connection")
        ->check(CLI::PositiveNumber);
    app.add_option("--hello-timeout-ms", c.hello_timeout_ms,
                   "Disconnect a connection that sends no HELLO within this time")
        ->check(CLI::Range(1u, 3600000u));
    app.add_option("--fault-block", c.fault_block_bytes,
                   "Bytes loaded for a fault that continues no sequential stream (a power of two, 4096 to 2097152)")
        ->check([](const std::string& s) -> std::string {
            // Read as CLI11 reads the option itself (strtoull, base 0): with std::stoull,
            // "065536" passed as 65536 and became 27486 (octal), a fault block of no power of two.
            std::uint64_t v = 0;
            const bool pow2 = CLI::detail::lexical_cast(s, v) && v && (v & (v - 1)) == 0;
            return pow2 && v >= 4096 && v <= 2u << 20 ? "" : "must be a power of two in [4096, 2097152]";
        });
    app.add_option("--readahead-max", c.readahead_max_bytes,
                   "Largest read-ahead window of a sequential stream, bytes (0: no read-ahead; at most 64 MiB)")
        ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{64} << 20));
    app.add_option("--staging-buffers", c.staging_buffers,
                   "Staging buffers per worker, 256 KiB each (or --fault-block if larger): the daemon's "
                   "memory for data in flight")
        ->check(CLI::Range(4u, 4096u));
    app.add_option("--poll-us", c.poll_us,
                   "After serving a fault, poll the userfaultfds for this many microseconds before sleeping "
                   "(0: sleep at once)")
        ->check(CLI::Range(0u, 1000000u));
    app.add_option("--pin-workers", c.pin_workers, "Pin worker i to CPU i (true/false)");
    app.add_option("--fd-store", c.fd_store,
                   "Under systemd (NOTIFY_SOCKET), keep clients in its descriptor store so that a restarted "
                   "daemon serves them on (true/false)");
    app.add_option("--memory-max", c.memory_max,
                   "Bytes the page cache may hold for all clients together, e.g. 512MiB or 2GiB "
                   "(default: half of the RAM, or of the daemon's cgroup limit)")
        ->transform(CLI::AsSizeValue(false))
        ->check(CLI::Range(std::uint64_t{1} << 20, std::uint64_t{1} << 40));
    app.add_option("--allow-store", c.allow_store,
                   "A URI prefix of NBD exports clients may map (repeatable; none by default), e.g. "
                   "nbd://10.0.0.5:10809/ or nbd+unix:///data?socket=/run/nbd.sock. A client's URI must have the "
                   "prefix's scheme, host, port and query (socket) exactly, and an export name that starts with "
                   "the prefix's");
    app.add_option("--store-connections", c.store_connections,
                   "Connections to each NBD export, per worker that reads it")
        ->check(CLI::Range(1u, 64u));
    app.add_option("--store-timeout-ms", c.store_timeout_ms,
                   "A store read or connection not done within this time fails: the faulting threads get SIGBUS")
        ->check(CLI::Range(100u, 3600000u));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return {std::nullopt, app.exit(e)};
    } catch (const std::exception& e) {
        std::cerr << "pagerd: " << e.what() << "\n";
        return {std::nullopt, 2};
    }
    if (c.socket_path.empty()) {
        const char* env = std::getenv("PAGERD_SOCKET");
        c.socket_path = env && *env ? env : proto::k_default_socket_path;
    }
    if (c.workers == 0) {
        const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
        c.workers = n > 0 ? static_cast<unsigned>(n) : 1;
    }
    return {c, 0};
}

}  // namespace pagerd::daemon
