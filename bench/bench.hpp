// pagerd-bench: first-touch read throughput of kernel mmap against pagerd, on one file.
// Declarations shared by the benchmark's sources; see main.cpp for the run itself.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pagerd/client.hpp"
#include "pagerd/util/result.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::bench {

inline constexpr std::uint64_t k_page = 4096;  // unit of every touch

// ---- file.cpp: the benchmarked file and its page cache ----------------------------------

struct BenchFile {
    util::UniqueFd fd;
    std::string path;         // as shown in the output
    std::uint64_t bytes = 0;  // whole 4 KiB pages only: the tail of a partial page is unused
    bool temporary = false;
};

// An existing file, read-only.
Result<BenchFile> open_file(const std::string& path);
// A new file of `bytes` (rounded down to whole pages) under `dir`, filled with non-zero
// pseudo-random bytes and synced. It is unlinked at once: it disappears when the fd closes.
Result<BenchFile> create_temp_file(const std::string& dir, std::uint64_t bytes);

// Reads the whole file once so that every page is in the page cache.
Result<void> make_hot(int fd, std::uint64_t bytes);
// fdatasync, posix_fadvise(POSIX_FADV_DONTNEED) over the file, then "1" into
// /proc/sys/vm/drop_caches when that is writable.
Result<void> make_cold(int fd, std::uint64_t bytes);
// Share of the file's pages in the page cache (mincore of a mapping), or -1 if unknown.
double resident_fraction(int fd, std::uint64_t bytes);

struct ColdProbe {
    bool possible = false;
    std::string note;  // how it was decided
};
// Drops the cache once and checks with mincore that it worked.
ColdProbe probe_cold(int fd, std::uint64_t bytes);

// ---- touch.cpp: page sets and timed first touches -------------------------------------

// 0, 1, ..., pages - 1
std::vector<std::uint32_t> sequential_pages(std::uint64_t pages);
// `count` distinct page indices below `pages`, drawn by a fixed-seed PRNG (same every run).
std::vector<std::uint32_t> random_pages(std::uint64_t pages, std::uint64_t count);

struct Measure {
    double seconds = 0;          // wall time of the touches only (not map / unmap)
    std::uint64_t checksum = 0;  // sum of every touched byte
};

// Maps the file fresh with mmap(MAP_PRIVATE, PROT_READ), touches, unmaps.
Result<Measure> measure_mmap(int fd, std::uint64_t bytes, const std::vector<std::uint32_t>& pages,
                             unsigned threads);
// Maps the file fresh through pagerd (Access::ReadOnly), touches, compares a sample of the
// touched pages with pread, unmaps. A mismatch is an error whose code is EBADMSG.
Result<Measure> measure_pagerd(libclient::Connection& conn, int fd, std::uint64_t bytes,
                               const std::vector<std::uint32_t>& pages, unsigned threads);

// ---- daemon.cpp: a private pagerd for the run -----------------------------------------

class Daemon {
public:
    // Starts `exe` (empty: look for it, see find_pagerd) on a socket in a new temporary
    // directory.
    static Result<std::unique_ptr<Daemon>> start(const std::string& exe);
    ~Daemon();  // SIGTERM, wait (SIGKILL after 5 s), remove the socket directory
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    const std::string& socket() const { return m_socket; }
    const std::string& exe() const { return m_exe; }
    pid_t pid() const { return m_pid; }
    // Empty while running; else how it ended.
    std::string exited();

private:
    Daemon() = default;
    pid_t m_pid = -1;
    std::string m_exe, m_dir, m_socket;
};

// Async-signal-safe: SIGTERM to the daemon started by Daemon::start (if still running),
// and removal of its socket and directory. For fatal signal handlers.
void daemon_emergency_cleanup() noexcept;

// ../daemon/pagerd next to this executable (the build tree), then pagerd next to it (an
// installed tree), then pagerd on $PATH. Empty if none is found.
std::string find_pagerd();

// Connection::connect, retried every 20 ms for `wait_ms` while `daemon` (may be null)
// keeps running.
Result<std::unique_ptr<libclient::Connection>> connect_with_retry(const std::string& socket,
                                                                  int wait_ms, Daemon* daemon);

// ---- report.cpp: the table and the JSON object ------------------------------------------

struct CaseResult {
    std::string name;          // e.g. "seq-hot-1t"
    std::uint64_t pages = 0;   // pages touched per run
    double mmap_seconds = -1;  // median over --repeat; negative when the case failed
    double pagerd_seconds = -1;
};

struct RunInfo {
    std::string file;
    std::uint64_t file_bytes = 0;
    unsigned threads = 1;
    unsigned repeat = 1;
    std::uint64_t random_pages = 0;
    bool cold_possible = false;
    std::string cold_note;
    std::string daemon;  // which daemon served the run
    bool own_daemon = false;
    bool have_status = false;
    libclient::Status status;
    std::vector<std::string> errors;
};

void print_table(const RunInfo& info, const std::vector<CaseResult>& cases);
void print_json(const RunInfo& info, const std::vector<CaseResult>& cases);

}  // namespace pagerd::bench
