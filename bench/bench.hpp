// pagerd-bench: first-touch read throughput of pagerd against baselines (kernel mmap, an
// in-process userfaultfd loop, pagerd with 1 thread) with target ratios, on one file;
// write faults and flush throughput of Shared regions against in-process baselines.
// Declarations shared by the benchmark's sources; see main.cpp for the run itself.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
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

// The byte touched in page p: it moves with p so that the checksum covers more than byte 0.
inline std::uint64_t touch_offset(std::uint32_t p) { return std::uint64_t{p} * k_page + (p * 97u) % k_page; }

struct Measure {
    double seconds = 0;          // wall time of the touches only (not map / unmap)
    std::uint64_t checksum = 0;  // sum of every touched byte
};

// Touches one byte of each page in `pages` of the memory at `addr`, split into `threads`
// contiguous shares; the clock runs from releasing the (already started) threads to the
// last one finishing. The same loop for every side of every read case.
Measure touch(const void* addr, const std::vector<std::uint32_t>& pages, unsigned threads);

// Maps the file fresh with mmap(MAP_PRIVATE, PROT_READ), madvise(advice) unless advice is
// MADV_NORMAL, touches, unmaps.
Result<Measure> measure_mmap(int fd, std::uint64_t bytes, const std::vector<std::uint32_t>& pages,
                             unsigned threads, int advice);

// What the daemon said about one pagerd measurement.
struct PagerdRun {
    Measure m;
    double fill_seconds = -1;    // Prefetch::All: map to the return of prefetch(wait=true)
    bool have_region = false;    // `region` was found in Connection::regions() before unmap
    libclient::RegionInfo region;
    std::string region_note;     // why not
    double cpu_seconds = -1;     // daemon utime+stime over map..touches; negative if unknown
    bool have_faults = false;    // Status::faults read before and after
    std::uint64_t faults = 0;    // delta of Status::faults over map..touches
    std::uint64_t faults_after_fill = 0;  // Prefetch::All: delta over the timed touches only
    std::uint64_t pages_prefetched = 0;   // delta of Status::pages_prefetched over map..touches
};

struct PagerdSetup {
    libclient::Prefetch prefetch = libclient::Prefetch::Sequential;
    bool fill = false;       // prefetch(region, size, wait=true) before the clock starts
    pid_t daemon_pid = -1;   // for its CPU time; -1: unknown
};

// Maps the file fresh through pagerd (Access::ReadOnly, policy s.prefetch), touches,
// compares a sample of the touched pages with pread, reads the region's figures from
// Connection::regions(), unmaps. A mismatch is an error whose code is EBADMSG.
Result<PagerdRun> measure_pagerd(libclient::Connection& conn, int fd, std::uint64_t bytes,
                                 const std::vector<std::uint32_t>& pages, unsigned threads,
                                 const PagerdSetup& s);

// ---- uffd_loop.cpp: the in-process userfaultfd baseline ---------------------------------

// The file read into anonymous memory (not timed); a fresh anonymous region registered
// MISSING with this process's own userfaultfd; one handler thread doing blocking read() of
// the uffd and UFFDIO_COPY of each faulting 4 KiB page from the copy; touch() over it.
// `how` receives how the userfaultfd was obtained.
Result<Measure> measure_uffd_loop(int fd, std::uint64_t bytes, const std::vector<std::uint32_t>& pages,
                                  unsigned threads, std::string* how = nullptr);

// ---- write.cpp, flush.cpp: write faults and flush throughput of Shared regions ---------

// Where (page p's byte) and what (never zero; differs between consecutive salts) the write
// and flush cases write.
inline std::uint64_t write_offset(std::uint32_t p) { return std::uint64_t{p} * k_page + (p * 61u) % k_page; }
inline unsigned char write_value(std::uint32_t p, unsigned salt)
{
    return static_cast<unsigned char>((p * 131u + salt * 29u) % 255u + 1u);
}

struct WriteCase {
    std::string name;      // e.g. "uffd-wp-loaded-1t"
    std::string kind;      // "mprotect", "anon" (baselines), "loaded", "fresh" (pagerd)
    std::string strategy;  // tracking_name() of the pagerd cases; empty for the baselines
    unsigned threads = 1;
    std::uint64_t pages = 0;
    double seconds = -1;   // median over --repeat; negative when skipped or failed
    std::string note;      // why it was skipped
};

struct FlushCase {
    std::string name;      // "pwrite-4k", "pwrite-big", "flush-uffd-wp", ...
    std::string strategy;  // empty for the pwrite baselines
    std::uint64_t pages = 0;          // pages dirtied
    std::uint64_t written_pages = 0;  // as Connection::flush reported (pwrite: pages)
    double seconds = -1;              // median over --repeat; negative when skipped or failed
    std::string note;
};

struct WriteSetup {
    int fd = -1;              // O_RDWR, at least pages * 4 KiB; its first pages are written
    std::uint64_t pages = 0;  // --write-pages
    unsigned threads = 1;     // of the N-thread cases
    unsigned repeat = 1;
    bool progress = false;    // one line per case on stderr
    std::function<void(const std::string&)> error;  // reports an error (exit status 1)
};

std::vector<WriteCase> run_write_cases(libclient::Connection& conn, const WriteSetup& s);
std::vector<FlushCase> run_flush_cases(libclient::Connection& conn, const WriteSetup& s);

// Helpers of write.cpp also used by flush.cpp.
unsigned next_salt();  // a new value for write_value, per measurement
double median_of(std::vector<double> v);  // -1 if empty
// Writes write_value(p, salt) at write_offset(p) of pages [0, pages), split into `threads`
// contiguous shares; returns the wall time of the writes alone.
double timed_writes(void* addr, std::uint64_t pages, unsigned threads, unsigned salt);
// Compares 64 pages spread over [0, pages) of the file (pread) with the expected byte, and,
// when `mem` is not null, the whole page with `mem`. Empty if equal, else what differs.
std::string check_written(int fd, const void* mem, std::uint64_t pages, unsigned salt);

// ---- daemon.cpp: a private pagerd for the run -----------------------------------------

class Daemon {
public:
    // Starts `exe` (empty: look for it, see find_pagerd) on a socket in a new temporary
    // directory.
    static Result<std::unique_ptr<Daemon>> start(const std::string& exe, const std::vector<std::string>& extra_args = {});
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

// utime+stime of a process in seconds (/proc/<pid>/stat, 1/CLK_TCK resolution); -1 if unknown.
double process_cpu_seconds(pid_t pid);
// A "Vm...:" line of /proc/<pid>/status ("VmHWM", "VmRSS") in KiB; -1 if unknown.
long long process_vm_kib(pid_t pid, const char* field);

// Connection::connect, retried every 20 ms for `wait_ms` while `daemon` (may be null)
// keeps running.
Result<std::unique_ptr<libclient::Connection>> connect_with_retry(const std::string& socket,
                                                                  int wait_ms, Daemon* daemon);

// ---- cache.cpp: the daemon's page cache against the kernel's (--cases cache) ------------

// One row of the cache table: a pagerd figure against a baseline figure of the same run.
struct CacheCase {
    std::string num;       // "1", "2", "3m" (memory), "3t" (time), "4", "5"; "x1".. rows without a target
    std::string id;        // unique, for --json
    std::string name;      // the pagerd side
    std::string baseline;  // short name of the baseline
    std::string title;     // the case in words
    bool memory = false;   // values are bytes and lower is better; else GB/s, higher is better
    bool target_case = true;
    double target = -1;    // ratio pagerd / baseline to reach (memory: at most); negative: none
    double base_value = -1, pagerd_value = -1;  // GB/s (all processes together), or bytes
    bool base_bound = false;  // the baseline was stopped: base_value is an upper bound
    std::uint64_t pages = 0;  // 4 KiB touches per process
    unsigned processes = 1;
    std::string failure, skipped;
    std::vector<std::string> notes;                         // what the daemon and the kernel said
    std::vector<std::pair<std::string, double>> figures;    // the same as numbers, for --json

    bool ran() const { return base_value > 0 && pagerd_value > 0; }
    double ratio() const { return ran() ? pagerd_value / base_value : -1; }
    bool met() const { return ran() && target > 0 && (memory ? ratio() <= target : ratio() >= target); }
};

struct CacheSetup {
    int fd = -1;              // the file, read-only
    std::uint64_t bytes = 0;  // whole pages
    std::string pagerd;       // executable (empty: find_pagerd)
    std::vector<std::string> daemon_args;  // --daemon-arg, before the case's own --memory-max
    std::vector<std::uint32_t> random;     // case 4's pages (the read cases' random set)
    std::uint64_t zipf_reads = 200000;
    bool cold_possible = false;
    std::string cold_note;
    bool progress = false;
    std::function<void(const std::string&)> error;  // reports an error (exit status 1)
};

struct CacheRun {
    std::vector<CacheCase> cases;
    std::vector<std::string> daemons;  // how each daemon of the group was started, and its peak RSS
    double seconds = -1;               // wall time of the whole group
    std::string load;                  // /proc/loadavg when it started (other work on the machine)
};

CacheRun run_cache_cases(const CacheSetup& s);
// pagerd-bench runs itself (fork + exec of /proc/self/exe) for every reading process of
// the cache cases: `pagerd-bench --cache-child key=value...`.
inline constexpr const char* k_cache_child_flag = "--cache-child";
int cache_child_main(int argc, char** argv);

// ---- second_copy.cpp: the kernel's second copy of a loaded page (--cases second-copy) ----

inline constexpr std::uint64_t k_second_copy_block = 256 * 1024;  // the daemon's staging buffer
inline constexpr unsigned k_second_copy_depth = 8;                 // reads in flight of f and g

// a: buffered pread then POSIX_FADV_DONTNEED on the block (the daemon today); b: pread of a
// second descriptor opened O_DIRECT; c: preadv2(RWF_DONTCACHE); d: buffered pread (cat);
// e: memcpy out of a fresh mmap of the file (the baseline); f, g: b and c through io_uring
// with k_second_copy_depth reads in flight (the daemon reads through io_uring).
enum class SecondCopyMethod { Fadvise, Direct, Dontcache, Buffered, Mmap, DirectRing, DontcacheRing };
const char* second_copy_method_name(SecondCopyMethod m);

struct SecondCopyRow {
    std::string pattern;  // "seq", "rand" (drawn with replacement), "perm" (every block once, shuffled)
    bool hot = false;
    SecondCopyMethod method = SecondCopyMethod::Mmap;
    std::uint64_t bytes = 0;  // read per run
    std::vector<double> seconds, cpu_seconds;          // per run: wall time, the process's utime+stime
    std::vector<double> resident_before, resident_after;  // per run: bytes of the file in the page cache
    std::string skipped, failure;
};

struct SecondCopySetup {
    int fd = -1;
    std::uint64_t bytes = 0;
    std::uint64_t random_blocks = 20000;  // drawn with replacement among the file's blocks
    unsigned runs = 3;
    bool progress = false;
    std::function<void(const std::string&)> error;
};

struct SecondCopyRun {
    std::vector<SecondCopyRow> rows;
    unsigned runs = 0;
    std::uint64_t bytes = 0;  // whole 256 KiB blocks of the file
    std::uint64_t random_blocks = 0, distinct_blocks = 0;
    std::uint64_t seq_checksum = 0, rand_checksum = 0;
    std::string fs, drop, dontcache, dio_align, load;
};

SecondCopyRun run_second_copy(const SecondCopySetup& s);

// ---- nbd.cpp: an NBD export through pagerd against nbdcopy and libnbd (--cases nbd) ------

// Figures of one pagerd side of an NBD case (the median run's), from the daemon.
struct NbdSide {
    std::vector<std::string> daemon_args;  // the pagerd's options beyond --socket and --allow-store
    double map_seconds = -1;               // map_store alone (its first map connects the store)
    bool have_store = false;               // `store`: Connection::stores() before the unmap
    libclient::StoreInfo store;            // of a fresh daemon: this side's reads only
    double inflight_little = -1;           // reads x average latency / wall time (Little's law)
    double inflight_mean = -1;             // sampled every 5 ms (StoreInfo::inflight, requests)
    std::uint32_t inflight_max = 0;
    std::uint32_t connections_max = 0;     // sampled: connections open at once
    unsigned samples = 0;
    bool have_region = false;              // the region's figures (Connection::regions())
    std::uint64_t faults = 0, p50_ns = 0, p99_ns = 0;
    double daemon_cpu = -1;                // utime+stime of the daemon, map to last touch
    double busiest_cpu = -1;               // of its busiest thread
    std::string busiest;                   // that thread's name
    double server_cpu = -1;                // nbdkit's utime+stime over the side
};

// One row of the NBD table: a pagerd side against a baseline measured in the same run.
struct NbdCase {
    std::string num;       // "1", "2" (targets), "x1".. (more pagerd sides), "s1".. (sequential sweep)
    std::string id;        // unique, for --json
    std::string name;      // the pagerd side
    std::string baseline;  // short name of the baseline
    std::string title;     // the case in words
    bool target_case = false;
    double target = -1;    // ratio pagerd / baseline of throughput to reach
    bool random = false;
    unsigned threads = 1;
    std::string prefetch;  // the pagerd side's policy
    std::uint64_t pages = 0;
    double base_seconds = -1, pagerd_seconds = -1;  // medians over --repeat
    double base_cpu = -1;         // the baseline's own CPU time (nbdcopy's; the libnbd reader's)
    double base_server_cpu = -1;  // nbdkit's over the baseline
    NbdSide side;
    std::string failure, skipped;
    std::vector<std::string> notes;

    bool ran() const { return base_seconds > 0 && pagerd_seconds > 0 && pages > 0; }
    double ratio() const { return ran() ? base_seconds / pagerd_seconds : -1; }
    bool met() const { return ran() && target > 0 && ratio() >= target; }
};

struct NbdSetup {
    int fd = -1;              // the file the export serves (also read to check the bytes)
    std::uint64_t bytes = 0;  // whole pages
    std::string path;         // its name for nbdkit; empty: an unlinked temporary (copied to a named file)
    std::string tmpdir;       // where that copy goes
    std::string pagerd;       // executable (empty: find_pagerd)
    std::vector<std::string> daemon_args;  // --daemon-arg, before every side's own options
    std::string delay = "1ms";             // nbdkit-delay-filter delay-read=
    std::vector<std::uint32_t> random;     // pages of the random cases
    unsigned random_threads = 8;
    std::vector<std::vector<std::string>> sweep;  // pagerd options of each sequential sweep row
    std::vector<std::pair<unsigned, unsigned>> nbdcopy_depths;  // nbdcopy --connections, --requests
    unsigned repeat = 1;
    bool progress = false;
    std::function<void(const std::string&)> error;  // reports an error (exit status 1)
};

// nbdcopy with fewer connections or requests in flight than its defaults.
struct NbdCopyRow {
    unsigned connections = 0, requests = 0;
    std::uint64_t pages = 0;
    double seconds = -1, cpu = -1, server_cpu = -1;  // medians
};

struct NbdRun {
    std::vector<NbdCase> cases;
    std::vector<NbdCopyRow> copies;
    std::string server;      // the nbdkit command line
    std::string nbdcopy;     // the baseline's command line
    std::string export_file; // what the export serves
    std::string libnbd;      // libnbd's version
    std::string load;        // /proc/loadavg when the group started
    double seconds = -1;     // wall time of the whole group
};

// nbdkit (with its delay filter) and nbdcopy on $PATH; else what to install.
Result<void> nbd_tools_present();
NbdRun run_nbd_cases(const NbdSetup& s);
// Async-signal-safe: removes the named copy of the file the export serves, if any.
void nbd_emergency_cleanup() noexcept;

// ---- preload.cpp: unmodified python3 + numpy under pagerd-run (--cases preload) --------

// One run of bench/preload_sum.py (numpy.memmap summing the file as uint64), as it reported
// itself and as this process saw it.
struct PreloadSide {
    double seconds = -1;       // the script's own clock: memmap + sum (single), pool made to last part (pool)
    double wall = -1;          // fork to exit of python3 (or of pagerd-run and python3)
    std::uint64_t sum = 0;     // wrapping sum of the uint64 words
    std::uint64_t rss = 0, pss = 0;  // smaps_rollup of python3 (+ every worker for pool)
    std::uint64_t daemon_rss = 0, daemon_pss = 0;  // pagerd sides: the daemon's, read by python3 at the same moment
    unsigned workers = 0;      // distinct worker processes (pool)
    double cpu = -1;           // utime+stime of python3 and its children (wait4)
    // pagerd sides only:
    bool taken = false;        // the preload library's debug line says the file was taken
    std::string debug;         // its debug lines about the file
    std::uint64_t faults = 0, cache_loads = 0, cache_hits = 0, bytes_read = 0;  // deltas over the run
    std::uint64_t cache_peak = 0;  // the daemon's cache_bytes, sampled every 10 ms, peak
    double daemon_cpu = -1;        // the daemon's utime+stime over the run
    bool ran() const { return seconds > 0; }
};

struct PreloadCase {
    std::string num;    // "1".."4"
    std::string name;   // "single-cold", "single-hot", "pool4-cold", "pool4-hot"
    std::string title;
    bool pool = false;
    bool cold = false;
    PreloadSide kernel, pagerd;  // without and with pagerd-run
    std::string failure, skipped;
    std::vector<std::string> notes;

    bool ran() const { return failure.empty() && skipped.empty() && kernel.ran() && pagerd.ran(); }
    double ratio() const { return ran() ? kernel.seconds / pagerd.seconds : -1; }  // throughput: higher is better
    // Memory: PSS of the Python processes (+ for pagerd the daemon's PSS at the same moment:
    // its cache pages that the workers map are counted once, shared between them).
    std::uint64_t kernel_memory() const { return kernel.pss; }
    std::uint64_t pagerd_memory() const { return pagerd.pss + pagerd.daemon_pss; }
    // The same with the daemon's cache peak instead of its PSS (the workers' share of the
    // cache pages they map is then counted twice: an upper bound).
    std::uint64_t pagerd_memory_cache() const { return pagerd.pss + pagerd.cache_peak; }
};

struct PreloadSetup {
    int fd = -1;              // the file (cold: dropped through it)
    std::uint64_t bytes = 0;  // whole pages
    std::string path;         // its name; empty: an unlinked temporary (copied to a named file)
    std::string tmpdir;
    std::string pagerd;       // executable (empty: find_pagerd)
    std::string pagerd_run;   // executable (empty: find_pagerd_run)
    std::string python = "/usr/bin/python3";
    std::string script;       // preload_sum.py (empty: find_preload_script)
    std::vector<std::string> daemon_args;
    unsigned workers = 4;
    bool cold_possible = false;
    std::string cold_note;
    bool progress = false;
    std::function<void(const std::string&)> error;
};

struct PreloadRun {
    std::vector<PreloadCase> cases;
    std::string array_file, pagerd_run, python, script, numpy;
    std::vector<std::string> daemons;  // how each pagerd side's daemon was started
    std::string load;
    double seconds = -1;
    unsigned workers = 4;
};

PreloadRun run_preload_cases(const PreloadSetup& s);
// ../preload/pagerd-run next to pagerd-bench (the build tree), pagerd-run next to it, on $PATH.
std::string find_pagerd_run();
// preload_sum.py next to pagerd-bench (the build tree's copy), else in the source tree.
std::string find_preload_script();
// Async-signal-safe: removes the named copy of the file, if any.
void preload_emergency_cleanup() noexcept;

// ---- report.cpp: the table and the JSON object ------------------------------------------

// One read case: a pagerd side against a baseline, measured back to back on the same file.
struct CaseResult {
    std::string name;          // of the pagerd side, e.g. "seq-cold-1t"
    std::string baseline;      // short name of the baseline, e.g. "mmap+MADV_SEQUENTIAL"
    std::string id;            // unique: name + "/" + baseline id
    std::string title;         // e.g. "sequential read, cold, 1 thread"
    std::string baseline_title;  // e.g. "kernel mmap + MADV_SEQUENTIAL"
    bool target_case = false;  // one of the table of targets (else an extra row)
    double target = -1;        // pagerd ÷ baseline throughput to reach; negative: none
    std::uint64_t pages = 0;   // pages touched per run
    unsigned threads = 1;
    std::string prefetch;      // policy of the pagerd side
    double base_seconds = -1;  // median over --repeat; negative when the case failed
    double pagerd_seconds = -1;
    std::string failure;       // why the case failed (empty: it ran)
    std::string skipped;       // why it was not run (not an error)
    // Pagerd side (the median run where a median is meaningful; sums over every run else).
    bool have_region = false;
    std::string region_note;               // why the region's figures are missing
    std::uint64_t region_faults = 0;       // faults of the region (median over runs)
    double p50_ns = -1, p99_ns = -1;       // per-region fault latency (median over runs)
    libclient::LatencyHistogram histogram{};  // per-region, summed over runs
    double cpu_seconds = -1;               // daemon CPU over the pagerd side, summed over runs
    std::uint64_t daemon_faults = 0;       // Status::faults delta, summed over runs
    bool have_daemon_faults = false;
    std::uint64_t pages_prefetched = 0;    // Status::pages_prefetched delta, summed over runs
    double fill_seconds = -1;              // Prefetch::All: median fill time
    std::uint64_t faults_after_fill = 0;   // Prefetch::All: max over runs
    // Baseline, when it is pagerd too: its region's latency.
    double base_p50_ns = -1, base_p99_ns = -1;

    bool ran() const { return base_seconds > 0 && pagerd_seconds > 0 && pages > 0; }
    double ratio() const { return ran() ? base_seconds / pagerd_seconds : -1; }
    bool met() const { return ran() && target > 0 && ratio() >= target; }
    double cpu_per_fault_us() const
    {
        return cpu_seconds >= 0 && have_daemon_faults && daemon_faults > 0
                   ? cpu_seconds * 1e6 / static_cast<double>(daemon_faults)
                   : -1;
    }
};

struct RunInfo {
    std::string kernel;  // uname -r
    long cpus = 0;
    std::string date;    // start of the run, UTC, ISO 8601
    bool reads = true, extras = false, writes = false, flushes = false, caches = false;  // the groups of --cases run
    std::string file;
    std::uint64_t file_bytes = 0;
    unsigned threads = 1;
    unsigned repeat = 1;
    std::uint64_t random_pages = 0;
    bool cold_possible = false;
    std::string cold_note;
    std::string uffd_loop;  // how the uffd loop baseline got its userfaultfd
    std::string daemon;  // which daemon served the run
    bool own_daemon = false;
    pid_t daemon_pid = -1;
    long long daemon_peak_rss_kib = -1;  // VmHWM at the end
    long long daemon_rss_kib = -1;       // VmRSS at the end
    bool have_status = false;
    libclient::Status status;
    std::vector<std::string> errors;
    std::string write_file;  // the file of the write and flush cases
    std::uint64_t write_pages = 0;
    std::vector<WriteCase> write_cases;
    std::vector<FlushCase> flush_cases;
    CacheRun cache;  // --cases cache
    bool nbd = false;  // --cases nbd
    NbdRun nbd_run;
    bool second_copy = false;  // --cases second-copy
    SecondCopyRun second;
    bool preload = false;  // --cases preload
    PreloadRun preload_run;
};

void set_machine(RunInfo& info);  // kernel, cpus, date
void print_table(const RunInfo& info, const std::vector<CaseResult>& cases);
void print_json(const RunInfo& info, const std::vector<CaseResult>& cases);

// report.cpp helpers, also used by report_write.cpp.
std::string fmt(double v);  // about three significant digits
std::string target_text(double ratio);  // "2.5x"
std::string json_string(const std::string& s);
std::string json_number(double v);  // null if negative or not finite
// An aligned table: the first `left` columns left-aligned, the others right-aligned.
void print_rows(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows,
                std::size_t left = 1);

double gbps(double seconds, std::uint64_t pages);  // 4 KiB x pages / seconds / 10^9; -1 if not run

// plot.cpp: --plot. gnuplot on $PATH (an error telling to install gnuplot-nox if not).
Result<std::string> find_gnuplot();
// One PNG, two panels: GB/s of both sides of every target case, and the pagerd side's
// fault latency p50/p99 (log scale).
Result<void> write_plot(const std::string& gnuplot, const std::string& png, const RunInfo& info,
                        const std::vector<CaseResult>& cases);
// plot.cpp helpers, also used by plot_cache.cpp.
std::string gnuplot_quoted(const std::string& s);  // a double-quoted gnuplot string
std::string gnuplot_num(double v);                 // "NaN" unless positive and finite
// Lower and upper bound of a log axis holding every positive value of `v`, with room above
// (a factor `headroom`) for the labels.
std::pair<double, double> gnuplot_log_range(const std::vector<double>& v, double headroom);
// The lines that select a PNG terminal (pngcairo when there is one) and the output file.
std::string gnuplot_terminal(int width, int height, const std::string& png);
// Writes `script` to a temporary file, runs gnuplot on it, checks that `png` was written.
Result<void> run_gnuplot(const std::string& gnuplot, const std::string& script, const std::string& png);

// plot_cache.cpp: --plot with the cache cases. One PNG, two panels: GB/s of both sides of
// every throughput row (log scale; ratio, target and met above each group), and memory in
// GiB (3m, the kernel's page cache after case 3, the readers' cgroup peaks of 1 and 2).
Result<void> write_cache_plot(const std::string& gnuplot, const std::string& png, const RunInfo& info);
// Where --plot FILE draws the cache cases: FILE itself when no read case ran, else
// FILE-cache.png next to it (FILE's ".png" replaced).
std::string cache_plot_path(const std::string& plot, bool reads_ran);

// report_write.cpp: the write and flush tables, and their JSON members.
void print_write_tables(const RunInfo& info);
void print_write_json(const RunInfo& info);  // prints ,"write_cases":[...],"flush_cases":[...]

// report_second_copy.cpp: the second-copy table, and its JSON member.
void print_second_copy_tables(const RunInfo& info);
void print_second_copy_json(const RunInfo& info);  // prints ,"second_copy":{...}

// report_nbd.cpp: the NBD table, and its JSON member.
void print_nbd_tables(const RunInfo& info);
void print_nbd_json(const RunInfo& info);  // prints ,"nbd_cases":[...],...

// report_preload.cpp: the preload table, and its JSON member.
void print_preload_tables(const RunInfo& info);
void print_preload_json(const RunInfo& info);  // prints ,"preload":{...}

// report_cache.cpp: the cache table, and its JSON member.
void print_cache_tables(const RunInfo& info);
void print_cache_json(const RunInfo& info);  // prints ,"cache_cases":[...],"cache_daemons":[...],...

}  // namespace pagerd::bench
