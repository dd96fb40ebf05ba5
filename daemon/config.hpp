// Daemon settings: command line, then an optional config file with the same option names.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pagerd::daemon {

struct Config {
    std::string socket_path;  // --socket, else $PAGERD_SOCKET, else /run/pagerd/pagerd.sock
    unsigned workers = 0;     // 0: one per CPU
    std::string log_level = "info";
    unsigned socket_mode = 0666;
    unsigned max_clients = 1024;
    unsigned max_regions_per_client = 1024;
    std::uint64_t max_mapped_bytes_per_client = std::uint64_t{1} << 40;
    unsigned hello_timeout_ms = 5000;
    std::uint64_t fault_block_bytes = 4096;  // bytes loaded for a fault that continues no stream
    std::uint64_t readahead_max_bytes = 4u << 20;  // largest read-ahead window of a stream
    unsigned staging_buffers = 64;                 // per worker, each staging_buffer_bytes()
    unsigned poll_us = 0;  // after a fault, keep polling the userfaultfds this long before sleeping
    bool pin_workers = false;  // worker i runs on CPU i (modulo the CPUs)
    // Bytes of one staging buffer: one read of the store, installed with one UFFDIO_COPY.
    std::uint64_t staging_buffer_bytes() const { return fault_block_bytes > k_chunk ? fault_block_bytes : k_chunk; }
    static constexpr std::uint64_t k_chunk = 256 * 1024;
    bool fd_store = true;
    // Bytes the page cache may hold for all clients together (0: CachePool::default_budget(),
    // half of the RAM or of the daemon's cgroup limit). SIGHUP applies a new value.
    std::uint64_t memory_max = 0;
    // Stores beyond files: URI prefixes a client may name (NBD exports; none by default),
    // connections per export and worker, and the deadline of a read or a connection.
    std::vector<std::string> allow_store;
    unsigned store_connections = 2;
    unsigned store_timeout_ms = 30000;  // under systemd: keep clients in the descriptor store across restarts
};

// Parses argv. Returns the config, or an exit code when the program should stop now
// (--help, --version: 0; bad input: 2, after printing a clear message).
struct ParsedConfig {
    std::optional<Config> config;
    int exit_code = 0;
};
ParsedConfig parse_config(int argc, char** argv);

std::string version_string();  // "pagerd 0.1.0"

}  // namespace pagerd::daemon
