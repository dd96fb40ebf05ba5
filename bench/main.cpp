// pagerd-bench: first-touch reads of one file through pagerd against baselines measured in
// the same run (kernel mmap with and without madvise, an in-process userfaultfd loop,
// pagerd with 1 thread), each with a target ratio; write faults and flush throughput of
// Shared regions against in-process baselines; in one run.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>

#include "bench.hpp"

namespace {

using namespace pagerd;
using namespace pagerd::bench;

struct Options {
    std::string file;
    std::uint64_t size = 1ull << 30;
    std::string tmpdir = "/var/tmp";
    unsigned threads = 0;
    std::string socket;
    std::string pagerd;
    std::vector<std::string> daemon_args;  // passed on to the pagerd it starts
    std::uint64_t random_pages = 20000;
    unsigned repeat = 1;
    bool json = false;
    std::string plot;
    std::vector<std::string> cases = {"read", "extra", "write", "flush"};
    std::uint64_t write_pages = 16384;
    std::uint64_t zipf_reads = 200000;
    std::uint64_t nbd_random_pages = 4000;
    std::string nbd_delay = "1ms";
    unsigned nbd_threads = 8;
    std::vector<unsigned> nbd_connections = {1, 2, 4};
    std::vector<std::uint64_t> nbd_readahead = {4ull << 20, 16ull << 20, 64ull << 20};
    std::vector<std::string> nbd_nbdcopy = {"1x4", "1x16", "1x64"};
    std::string pagerd_run;      // --pagerd-run (empty: find_pagerd_run)
    std::string preload_script;  // --preload-script (empty: find_preload_script)
    std::string python = "/usr/bin/python3";
    unsigned preload_workers = 4;
};

// One read case: the pagerd side and its baseline.
enum class Base { Mmap, MmapSequential, MmapRandom, UffdLoop, Pagerd1t };

struct ReadSpec {
    std::string name;            // of the pagerd side
    std::string baseline;        // short name of the baseline
    std::string base_id;         // for CaseResult::id
    std::string title;           // the pagerd side in words
    std::string baseline_title;  // the baseline in words
    bool target_case = false;
    double target = -1;
    bool random = false;
    bool cold = false;
    unsigned threads = 1;
    Base base = Base::Mmap;
    libclient::Prefetch prefetch = libclient::Prefetch::Sequential;
    bool fill = false;  // Prefetch::All: the clock starts once prefetch(wait=true) returned
};

constexpr const char* k_footer = R"(
Read cases (--cases read): the table of targets, in this order. Every case measures its
baseline, then its pagerd side, back to back on the same file, in one run:
  case  pagerd side (pattern, cache, threads)   baseline                          target
  1     seq-cold-1t                             mmap (kernel mmap, default)       >= 2.5x
  2     seq-cold-1t                             mmap+MADV_SEQUENTIAL              >= 1.0x
  3     rand-cold-1t                            mmap+MADV_RANDOM                  >= 0.9x
  4     rand-hot-1t                             uffd loop (in-process)            >= 0.7x
  5     rand-hot-2t                             pagerd rand-hot-1t                >= 1.5x
  6     seq-prefetch-all-1t (after the fill)    mmap, page cache hot              >= 0.8x
target: the ratio pagerd / baseline of throughput (higher is better) that meets it.
- seq: one byte of every 4 KiB page of the file, in order (--size, default 1 GiB); rand:
  --random-pages distinct pages drawn by a fixed-seed PRNG, the same set every run and for
  both sides. Threads split the pages into contiguous shares. The same touch loop (one
  volatile byte read per page) runs on every side.
- cold: fdatasync, posix_fadvise(POSIX_FADV_DONTNEED) over the file, then "1" into
  /proc/sys/vm/drop_caches, before each side of each run. Cold cases run only when a drop
  was checked to work (mincore) at the start; otherwise they are skipped with a note.
  hot: the file was read once (pread) before.
- pagerd sides: a fresh region of the whole file, Connection::map_fd with Access::ReadOnly
  and the default policy Prefetch::Sequential (cases 1-5: one policy whatever the access
  pattern); case 6 maps with Prefetch::All, page cache hot, calls
  Connection::prefetch(region, size, wait=true) and starts the clock once it returned
  (the fill time, from map_fd to that return, and the fill throughput are reported).
- mmap sides: a fresh mmap(MAP_PRIVATE, PROT_READ) of the whole file, with madvise
  MADV_SEQUENTIAL or MADV_RANDOM on the whole mapping where named.
- uffd loop: the file read into anonymous memory (not timed); a fresh anonymous region
  registered UFFDIO_REGISTER_MODE_MISSING with the process's own userfaultfd
  (UFFD_USER_MODE_ONLY, else /dev/userfaultfd); one handler thread doing blocking read()
  of the uffd and UFFDIO_COPY of the faulting 4 KiB page from the copy.
- case 5's baseline is pagerd's case 4 side measured again in the same case.
Every measurement maps anew so that every page is really touched first, and unmaps after;
the clock covers the touches only (not map, fill-wait or unmap).

Extra read cases (--cases extra): pagerd with its default policy against kernel mmap
(default), seq and rand x hot and cold x 1 and --threads threads, no target (seq-cold-1t
only when the read cases did not run it already).

Figures per read case: GB/s (4 KiB x pages touched / wall time) of both sides, the ratio
pagerd / baseline, the target and whether it was met; µs per page of both sides; for the
pagerd side, from the daemon: the region's fault count and fault latency p50/p99
(Connection::regions(), the region found by its id before it is unmapped), and the
daemon's CPU time per fault (utime+stime of /proc/<pid>/stat over the pagerd side, map to
last touch, divided by the change of the status' fault count; clock-tick resolution,
1/CLK_TCK = 10 ms on Linux; "n/a" with --socket, whose daemon's pid is not known). At the end: the daemon's peak RSS (VmHWM)
and its RSS now. With --repeat: medians of the times and latencies; CPU per fault over
all runs. A case the daemon refuses (e.g. a policy or PREFETCH it does not offer yet) is
reported as FAILED with the reason, and the run goes on.

Checks: the sum of the touched bytes must be equal through both sides, and 64 of the pages
touched through pagerd are compared with pread of the file (every pagerd side). A mismatch
or a failed case is reported and makes the exit status 1; a missed target does not.

--plot FILE.png: one PNG drawn by gnuplot (package gnuplot-nox) with two panels: GB/s of
both sides of every case of the table of targets (of the extra cases when only those ran;
grouped bars, log scale, ratio, target and met above each group), and the pagerd side's
fault latency p50/p99 (log scale). gnuplot missing is an error before anything runs. When
the cache cases ran, a second PNG, FILE-cache.png next to FILE.png (FILE.png itself when
no read or extra case ran), with two panels: GB/s of both sides of every cache row (log
scale; ratio, target and met above each group), and memory in GiB (log scale): 3m, the
file left in the kernel's page cache after case 3's mmap and pagerd readers, and the
readers' cgroup peaks in cases 1 and 2.

Write cases (--cases write): one byte written in each of the first --write-pages pages of
the file, in order, per case on a new mapping; the clock covers the writes only:
  mprotect-Nt      anonymous memory, populated, then PROT_READ; a SIGSEGV handler (installed
                   for this case only) makes the faulting page writable and returns
  anon-Nt          fresh MAP_PRIVATE|MAP_ANONYMOUS memory (MADV_NOHUGEPAGE): first touch
  X-loaded-Nt      a Shared region (Connection::map_fd, Access::Shared, tracking X: uffd-wp,
                   sigsegv, async) whose every page was read first: the tracking cost alone
  X-fresh-1t       a new Shared region, the first touch is the write: load + tracking
with 1 thread and --threads threads (fresh: 1 thread). Each Shared region is unmapped (which
flushes it, not timed) and 64 pages of the file are checked for the written bytes. A
strategy the kernel does not offer (map_fd fails with ENOTSUP) is skipped with a note.
Figures: µs per page, and vs mprotect / vs anon, the baseline's time over the case's at the
same thread count (throughput ratio: above 1 means faster than the baseline).

Flush cases (--cases flush): every page of the same range dirtied (one byte each), then,
timed: pwrite-4k, one 4 KiB pwrite per page then fdatasync; pwrite-big, one pwrite of the
whole range then fdatasync; flush-X, Connection::flush of a fresh Shared region with tracking
X (the daemon writes the dirty pages through io_uring, then fdatasync). The file is synced
before each. Figures: MB/s (10^6 bytes) and the throughput ratio to each pwrite case. After
each, 64 pages of the file are compared (pread) with the bytes written: a mismatch is an
error (exit status 1).

The write and flush cases write into the temporary file (never into --file: with --file, or
when the temporary file is smaller than --write-pages pages, they use a temporary file of
their own in --tmpdir). Without read or extra in --cases the temporary file is
--write-pages pages.

Cache cases (--cases cache; not in the default set: about 75 s with the 1 GiB file, 30 s
of it x1): the daemon's page cache (one memfd per file, shared by its clients, bounded by
--memory-max, charged to the daemon) against the kernel's. Every reader is a process of
its own (pagerd-bench runs itself); pagerd readers use the cache (PAGERD_CACHE is unset for
them), ReadOnly, default policy. Each group of cases starts its own pagerd (--daemon-arg
options, then --memory-max) and stops it after:
  case  pagerd side                        baseline                              target
  1     seq-cold, reader in a 256 MiB      kernel mmap, reader in a 256 MiB      >= 1.0x
        cgroup, --memory-max 256MiB        cgroup
  2     --zipf-reads random 4 KiB reads,   kernel mmap + MADV_RANDOM, reader in  >= 1.0x
        Zipf(0.99), cold, same setup       a 256 MiB cgroup
  x1    case 2's pagerd side               plain mmap, 256 MiB cgroup, stopped   -
                                           after 30 s (it reads 128 KiB around
                                           every miss and thrashes the cgroup:
                                           it did not finish in 300 s here); its
                                           GB/s is then an upper bound
  3m    4 processes read the whole file    one copy of the file (its size)       <= 1.1x
        at once, cold: cache_bytes peak
  3t    the same, GB/s of the 4 together   4 processes with kernel mmap, cold    >= 0.8x
  4     a 2nd process's random reads       kernel mmap, page cache hot, the 1st  >= 0.8x
        (--random-pages) of a file a 1st   process keeps its mapping
        process loaded and keeps mapped
  5     seq-cold-1t                        the fastest of x2-x5 below            >= 1.0x
  x2-x5 case 5's pagerd side               mmap, mmap+MADV_SEQUENTIAL, pread loop
                                           of 1 MiB, O_DIRECT 1 MiB reads 32 deep
                                           (io_uring)                            -
  x6    case 5 with PAGERD_CACHE=0 (no     the best kernel path of case 5        -
        cache: the old private path)
Cases 3 to 5: pagerd --memory-max 1536MiB, no cgroup; case 5 runs in pagerd-bench itself.
Cold: the page cache dropped as for the read cases, and the daemon's cache empty (checked
in its status: no reader maps the file any more) before each side. Memory cgroups: v1 or
v2, a new one per side, limit 256 MiB, no swap; the reader moves itself in before it execs.
One touch loop everywhere (one byte per 4 KiB page, as the read cases); the pread and
O_DIRECT baselines sum the same bytes from their buffers; the sums must agree. Zipf: page rank k
drawn with probability ~ 1/k^0.99, ranks scattered over the file by a fixed permutation,
fixed seed. Reported per case: the daemon's cache figures over the pagerd side (loads,
hits, hit ratio = hits / (hits + loads), evictions, refaults, faults, cache_bytes peak,
bytes the daemon read from the disk, its CPU time), the share of the file left in the
kernel's page cache, the kernel readers' major faults and disk reads, the cgroups' peak
charge and OOM kills, each cache daemon's peak RSS, the load average at the start. A
reader re-reading a page it has mapped does not fault, so with one reader the daemon
counts a hit only for a page another reader loaded (case 4) or one mapped from the cache
without a load. With --socket the cache cases still start their own pagerd (found as
without --pagerd). --repeat does not apply to them (one run each).

Second-copy cases (--cases second-copy; not in the default set: about 4 minutes with the
1 GiB file): how the daemon can load a file into its own cache without the kernel's page
cache keeping the same bytes, measured in pagerd-bench itself (no daemon), one thread,
256 KiB blocks (the daemon's staging buffer), on the file of the read cases:
  a  pread, then posix_fadvise(POSIX_FADV_DONTNEED) on the block (what the daemon does)
  b  pread of a second descriptor of the file opened O_DIRECT (/proc/self/fd/N), into a
     4 KiB-aligned buffer
  c  preadv2(RWF_DONTCACHE) (Linux 6.14+, where the file system supports it; refused
     with EOPNOTSUPP or EINVAL elsewhere: the rows are then skipped and the reason shown)
  d  pread (buffered, nothing dropped: what cat does)
  e  memcpy of each block out of a fresh mmap(MAP_SHARED) of the file: the baseline
  f  b through io_uring, 8 reads in flight, 8 buffers (the daemon reads through io_uring)
  g  c through io_uring, 8 reads in flight (rw_flags RWF_DONTCACHE)
each over the whole file in order (seq), over every block once in a shuffled order
(perm), and over --random-pages blocks drawn with replacement among the file's 256 KiB
blocks (rand: 20000 draws among the 4096 blocks of 1 GiB re-read most blocks, which
favours the methods that keep the kernel's copy), fixed seed; cold (dropped as for the
read cases) and hot (the whole file read before). Every row runs max(3, --repeat) times,
runs outside and rows inside. Figures: MB/s best and median, the ratio to e of the same
pattern and state, the process's CPU time per GiB (io_uring's workers included), and the
MiB of the file in the kernel's page cache (mincore) before and after. The rows'
checksums must agree.

NBD cases (--cases nbd; not in the default set: about 45 s with the 1 GiB file): an NBD
export of the file, served by nbdkit on a Unix socket, read-only, with nbdkit-delay-filter
delay-read=--nbd-delay (default 1ms: every read request waits that long in the server; the
file itself stays in the kernel's page cache, read by nbdkit), read through pagerd against
plain NBD clients measured in the same run:
  case  pagerd side                              baseline                         target
  1     seq-1t: the whole export, 1 thread,      nbdcopy URI null: (its defaults:  >= 0.8x
        Prefetch::Sequential, pagerd's defaults  4 connections x 64 requests of
                                                 256 KiB), fork to exit
  2     rand-8t-none: --nbd-random-pages pages   libnbd nbd_pread of 4 KiB, one    >= 6.0x
        (default 4000, fixed seed), --nbd-threads request in flight, one connection
        threads (default 8), Prefetch::None
  x1    case 2 with Prefetch::Sequential         the same                          -
  x2    case 2 with 1 thread                     the same                          -
  x3    case 1 through map_fd of the export's    nbdcopy (case 1's)                -
        own file: the daemon's path without NBD
  s*    case 1 with --store-connections C and    nbdcopy (case 1's)                -
        --readahead-max R, every C of --nbd-connections (default 1,2,4) with every R of
        --nbd-readahead (default 4MiB,16MiB,64MiB)
Every pagerd side starts a pagerd of its own (--daemon-arg options, --allow-store for the
server's URI, then the side's options; default workers): its cache is cold, and the bytes
the daemon read from the export (Connection::stores()) must cover every page touched. The
whole export is mapped with Connection::map_store, Access::ReadOnly; one byte per 4 KiB page
is touched as in the read cases. Clock: case 1 and s*: map_store (its first map connects to
the export) + touches, as nbdcopy's includes its connections; random cases: the touches, and
the libnbd loop after its connection. Checks: sequential: the whole mapping compared with
the file; random: every page touched, through pagerd and through libnbd, compared with the
file, and their sums of touched bytes equal. nbdcopy with fewer connections and requests
(--nbd-nbdcopy, default 1x4,1x16,1x64) runs too, for the depth pagerd keeps. Figures per
pagerd side, from its daemon: NBD reads, their average size and latency, connections open
(sampled), requests in flight (Little's law: reads x average latency / wall time, and
sampled every 5 ms), the CPU of the daemon, of its busiest thread, and of nbdkit over the
side; for the sequential sides, the busiest thread's CPU seconds per GiB. With --repeat:
medians (the baselines run once per repetition). Needs nbdkit (with its delay filter) and
nbdcopy (libnbd-bin) on $PATH. Without --file, the export serves a named copy of the
temporary file in --tmpdir, removed at the end.

Preload cases (--cases preload; not in the default set: about 30 s with the 1 GiB
file): an unmodified program, Debian's python3 with numpy, summing the file as a
numpy.memmap of uint64 (bench/preload_sum.py), run as it is (the kernel's mmap) and under
pagerd-run (libpagerd-preload.so: its mmap served by pagerd), back to back in the same run:
  case  what python3 does                                 cold / hot
  1     np.memmap + sum of the whole array, one process   cold
  2     the same                                          hot
  3     a multiprocessing pool (fork start method) of     cold
        --preload-workers (default 4) workers made after
        the memmap, each summing one part of it (a barrier
        puts every part in a worker of its own)
  4     the same                                          hot
Cold: the kernel's page cache dropped as for the read cases, and a fresh pagerd (--daemon-arg
options; its cache empty) for the pagerd side. Hot: the file read once (pread) before each
side; the pagerd side runs once before the measured run with the same daemon, while
pagerd-bench maps the file through it (untouched) so that the daemon's cache of the file
stays open between the two runs. Every pagerd side has a daemon of its own.
Figures: the script's own clock (single: np.memmap + sum; pool: from making the pool to the
last part summed) on both sides and the ratio kernel / pagerd-run (above 1: pagerd-run is
faster); wall time of the program (fork to exit, numpy's import included); for the pool
cases memory: RSS and PSS (/proc/PID/smaps_rollup) of the parent and every worker summed,
read by the parent once every part is summed, and for pagerd the daemon's PSS read at the
same moment and the peak of its cache_bytes (sampled every 10 ms); totals: PSS of all of
them (Python's, + the daemon's), and PSS + the daemon's cache peak (an upper bound: the
cache pages the workers map are counted in both), each as a ratio pagerd / kernel; the
daemon's faults, cache loads and hits, bytes read and CPU over the measured run. Checks: the sums equal on both sides, and the
preload library's --debug line says it took the file; else the case FAILED (exit status 1).
pagerd-run: --pagerd-run, else ../preload/pagerd-run next to pagerd-bench (the build tree),
else pagerd-run next to it, else on $PATH. The script: --preload-script, else
preload_sum.py next to pagerd-bench (the build tree's copy), else bench/ of the source
tree. Without --file, python3 reads a named copy of the temporary file in --tmpdir, removed
at the end.

Daemon: without --socket, pagerd-bench starts its own pagerd on a temporary socket (from
--pagerd, else ../daemon/pagerd next to pagerd-bench as in the build tree, else pagerd next
to it, else pagerd on $PATH), waits up to 5 s for it to accept, and stops it with SIGTERM
at the end. Cold cases need the right to drop the cache (run as root).)";

volatile sig_atomic_t g_stop_signal = 0;  // set when stopping on SIGINT / SIGTERM / SIGHUP

void on_sigbus(int)
{
    if (g_stop_signal) {  // the daemon was stopped by on_stop: die of that signal, after its cleanup
        nbd_emergency_cleanup();  // on_stop may not have reached it yet
        preload_emergency_cleanup();
        ::raise(g_stop_signal);
    }
    static const char msg[] = "pagerd-bench: SIGBUS while touching a mapping (did pagerd stop?)\n";
    [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    daemon_emergency_cleanup();
    nbd_emergency_cleanup();
    preload_emergency_cleanup();
    ::_exit(1);
}

void on_stop(int sig)
{
    ::signal(sig, SIG_DFL);
    g_stop_signal = sig;
    daemon_emergency_cleanup();
    nbd_emergency_cleanup();
    preload_emergency_cleanup();
    ::raise(sig);
}

double median(std::vector<double> v)
{
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

int fail(const std::string& message)
{
    std::fprintf(stderr, "pagerd-bench: %s\n", message.c_str());
    return 1;
}

std::vector<ReadSpec> read_specs(bool table, bool extras, unsigned threads)
{
    using libclient::Prefetch;
    std::vector<ReadSpec> v;
    if (table) {
        v.push_back({"seq-cold-1t", "mmap", "mmap", "sequential read, cold, 1 thread", "kernel mmap, default",
                     true, 2.5, false, true, 1, Base::Mmap});
        v.push_back({"seq-cold-1t", "mmap+MADV_SEQUENTIAL", "mmap-madv-sequential", "sequential read, cold, 1 thread",
                     "kernel mmap + MADV_SEQUENTIAL", true, 1.0, false, true, 1, Base::MmapSequential});
        v.push_back({"rand-cold-1t", "mmap+MADV_RANDOM", "mmap-madv-random", "random 4 KiB reads, cold, 1 thread",
                     "kernel mmap + MADV_RANDOM", true, 0.9, true, true, 1, Base::MmapRandom});
        v.push_back({"rand-hot-1t", "uffd loop", "uffd-loop", "random 4 KiB reads, page cache hot, 1 thread",
                     "in-process userfaultfd loop (read() + UFFDIO_COPY of 4 KiB from an in-memory copy)", true, 0.7,
                     true, false, 1, Base::UffdLoop});
        v.push_back({"rand-hot-2t", "pagerd rand-hot-1t", "pagerd-1t", "random 4 KiB reads, page cache hot, 2 threads",
                     "the same pagerd case with 1 thread", true, 1.5, true, false, 2, Base::Pagerd1t});
        v.push_back({"seq-prefetch-all-1t", "mmap, hot", "mmap-hot",
                     "sequential read, prefetch=all, after the fill, 1 thread", "kernel mmap, page cache hot", true,
                     0.8, false, false, 1, Base::Mmap, Prefetch::All, true});
    }
    std::vector<unsigned> counts = {1};
    if (threads > 1) counts.push_back(threads);
    if (extras)
        for (const bool random : {false, true})
            for (const bool cold : {false, true})
                for (const unsigned t : counts) {
                    if (table && !random && cold && t == 1) continue;  // case 1 of the table
                    const std::string name = std::string(random ? "rand" : "seq") + (cold ? "-cold-" : "-hot-") +
                                             std::to_string(t) + "t";
                    const std::string title = std::string(random ? "random 4 KiB reads" : "sequential read") +
                                              (cold ? ", cold, " : ", page cache hot, ") + std::to_string(t) +
                                              (t == 1 ? " thread" : " threads");
                    v.push_back({name, "mmap", "mmap", title, "kernel mmap, default", false, -1, random, cold, t,
                                 Base::Mmap});
                }
    return v;
}

int run(const Options& o)
{
    ::signal(SIGBUS, on_sigbus);
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, on_stop);
    const bool progress = ::isatty(STDERR_FILENO);
    RunInfo info;
    set_machine(info);
    info.repeat = o.repeat;
    auto wanted = [&o](const char* c) { return std::find(o.cases.begin(), o.cases.end(), c) != o.cases.end(); };
    info.reads = wanted("read");
    info.extras = wanted("extra");
    info.writes = wanted("write");
    info.flushes = wanted("flush");
    info.caches = wanted("cache");
    info.second_copy = wanted("second-copy");
    info.nbd = wanted("nbd");
    info.preload = wanted("preload");
    const bool any_reads = info.reads || info.extras;
    const bool read_file = any_reads || info.caches || info.second_copy || info.nbd || info.preload;  // the file of --size (or --file) is read
    const bool main_daemon = any_reads || info.writes || info.flushes;  // the cache cases start their own
    const std::uint64_t write_bytes = o.write_pages * k_page;

    std::string gnuplot;
    if (!o.plot.empty()) {
        if (!any_reads && !info.caches)
            return fail("--plot draws the read and the cache cases: add read, extra or cache to --cases");
        auto g = find_gnuplot();
        if (!g) return fail(g.error().message);
        gnuplot = g.value();
        const std::size_t slash = o.plot.rfind('/');
        const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : o.plot.substr(0, slash);
        if (::access(dir.c_str(), W_OK) != 0) return fail("--plot: cannot write into " + dir);
    }

    if (info.nbd) {
        if (auto t = nbd_tools_present(); !t) return fail(t.error().message);
    }

    if (progress && o.file.empty()) std::fprintf(stderr, "creating the file...\n");
    auto file = o.file.empty() ? create_temp_file(o.tmpdir, read_file ? o.size : write_bytes) : open_file(o.file);
    if (!file) return fail(file.error().message);
    const int fd = file->fd.get();
    const std::uint64_t bytes = file->bytes;
    if (bytes / k_page > std::numeric_limits<std::uint32_t>::max()) return fail("the file is too large (16 TiB at most)");
    info.file = file->path;
    info.file_bytes = bytes;
    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    info.threads = o.threads ? o.threads : static_cast<unsigned>(std::max(1L, cpus));

    // The NBD cases need no cold page cache (nbdkit reads the file hot): no drop for them alone.
    const ColdProbe cold =
        read_file && (any_reads || info.caches || info.second_copy || info.preload) ? probe_cold(fd, bytes) : ColdProbe{};
    info.cold_possible = cold.possible;
    info.cold_note = cold.note;

    // The write and flush cases write into a temporary file only: this one if large enough.
    BenchFile own_write_file;
    int write_fd = fd;
    if (info.writes || info.flushes) {
        info.write_pages = o.write_pages;
        info.write_file = file->path;
        if (!file->temporary || bytes < write_bytes) {
            auto wf = create_temp_file(o.tmpdir, write_bytes);
            if (!wf) return fail(wf.error().message);
            own_write_file = std::move(wf.value());
            write_fd = own_write_file.fd.get();
            info.write_file = own_write_file.path;
        }
    }

    auto error = [&](const std::string& e) {
        std::fprintf(stderr, "pagerd-bench: error: %s\n", e.c_str());
        info.errors.push_back(e);
    };

    // The cache cases first: they start and stop daemons of their own, one at a time,
    // before the run's daemon exists.
    if (info.caches) {
        CacheSetup cs;
        cs.fd = fd;
        cs.bytes = bytes;
        cs.pagerd = o.pagerd;
        cs.daemon_args = o.daemon_args;
        cs.random = random_pages(bytes / k_page, o.random_pages);
        cs.zipf_reads = o.zipf_reads;
        cs.cold_possible = cold.possible;
        cs.cold_note = cold.note;
        cs.progress = progress;
        cs.error = error;
        info.cache = run_cache_cases(cs);
    }
    if (info.second_copy) {  // no daemon: reads of the file in this process
        SecondCopySetup ss;
        ss.fd = fd;
        ss.bytes = bytes;
        ss.random_blocks = o.random_pages;
        ss.runs = std::max(3u, o.repeat);
        ss.progress = progress;
        ss.error = error;
        info.second = run_second_copy(ss);
    }

    if (info.nbd) {  // a fresh daemon of its own for every pagerd side
        NbdSetup ns;
        ns.fd = fd;
        ns.bytes = bytes;
        ns.path = file->temporary ? "" : file->path;
        ns.tmpdir = o.tmpdir;
        ns.pagerd = o.pagerd;
        ns.daemon_args = o.daemon_args;
        ns.delay = o.nbd_delay;
        ns.random = random_pages(bytes / k_page, o.nbd_random_pages);
        ns.random_threads = o.nbd_threads;
        for (const unsigned c : o.nbd_connections)
            for (const std::uint64_t ra : o.nbd_readahead)
                ns.sweep.push_back({"--store-connections=" + std::to_string(c), "--readahead-max=" + std::to_string(ra)});
        for (const auto& d : o.nbd_nbdcopy) {
            const std::size_t x = d.find('x');
            ns.nbdcopy_depths.emplace_back(static_cast<unsigned>(std::stoul(d.substr(0, x))),
                                           static_cast<unsigned>(std::stoul(d.substr(x + 1))));
        }
        ns.repeat = o.repeat;
        ns.progress = progress;
        ns.error = error;
        info.nbd_run = run_nbd_cases(ns);
    }

    if (info.preload) {  // a fresh daemon of its own for every pagerd side
        PreloadSetup ps;
        ps.fd = fd;
        ps.bytes = bytes;
        ps.path = file->temporary ? "" : file->path;
        ps.tmpdir = o.tmpdir;
        ps.pagerd = o.pagerd;
        ps.pagerd_run = o.pagerd_run;
        ps.python = o.python;
        ps.script = o.preload_script;
        ps.daemon_args = o.daemon_args;
        ps.workers = o.preload_workers;
        ps.cold_possible = cold.possible;
        ps.cold_note = cold.note;
        ps.progress = progress;
        ps.error = error;
        info.preload_run = run_preload_cases(ps);
    }

    std::unique_ptr<Daemon> daemon;
    std::unique_ptr<libclient::Connection> connection;
    std::string socket = o.socket;
    if (!main_daemon) {
        info.daemon = info.caches    ? "none for the whole run (each group of cache cases starts its own, below)"
                      : info.nbd     ? "none for the whole run (every pagerd side of the NBD cases starts its own, below)"
                      : info.preload ? "none for the whole run (every pagerd side of the preload cases starts its own, below)"
                                     : "none (the second-copy cases read the file in pagerd-bench itself)";
    } else if (socket.empty()) {
        auto started = Daemon::start(o.pagerd, o.daemon_args);
        if (!started) return fail(started.error().message);
        daemon = std::move(started.value());
        socket = daemon->socket();
        std::string args;
        for (const auto& a : o.daemon_args) args += " " + a;
        info.daemon = daemon->exe() + args + " (started for this run on " + socket + ", pid " +
                      std::to_string(daemon->pid()) + ")";
        info.own_daemon = true;
        info.daemon_pid = daemon->pid();
    } else {
        info.daemon = "running daemon at " + socket + " (its pid is not known: no CPU time or RSS)";
    }
    if (main_daemon) {
        auto connected = connect_with_retry(socket, daemon ? 5000 : 0, daemon.get());
        if (!connected) return fail(connected.error().message);
        connection = std::move(connected.value());
    }

    const std::vector<std::uint32_t> seq = sequential_pages(bytes / k_page);
    const std::vector<std::uint32_t> rnd = random_pages(bytes / k_page, o.random_pages);
    info.random_pages = any_reads ? rnd.size() : 0;
    const std::vector<ReadSpec> specs = read_specs(info.reads, info.extras, info.threads);

    bool hot_now = false;  // probe_cold left the file out of the cache
    auto prepare = [&](bool want_cold) -> Result<void> {
        if (want_cold) {
            hot_now = false;
            return make_cold(fd, bytes);
        }
        if (hot_now) return {};
        hot_now = true;
        return make_hot(fd, bytes);
    };

    PagerdSetup plain;
    plain.daemon_pid = info.daemon_pid;

    std::vector<CaseResult> results;
    bool daemon_lost = false;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        libclient::Connection& conn = *connection;
        const ReadSpec& s = specs[i];
        const auto& pages = s.random ? rnd : seq;
        CaseResult r;
        r.name = s.name;
        r.baseline = s.baseline;
        r.id = s.name + "/" + s.base_id;
        r.title = s.title;
        r.baseline_title = s.baseline_title;
        r.target_case = s.target_case;
        r.target = s.target;
        r.pages = pages.size();
        r.threads = s.threads;
        r.prefetch = libclient::prefetch_name(s.prefetch);
        if (s.cold && !cold.possible) {
            r.skipped = "cold cases not possible here (" + cold.note + ")";
            results.push_back(r);
            continue;
        }
        if (daemon_lost) {
            r.failure = "not run: the connection to pagerd was lost";
            results.push_back(r);
            continue;
        }
        if (progress) std::fprintf(stderr, "[%zu/%zu] %s vs %s\n", i + 1, specs.size(), s.name.c_str(), s.baseline.c_str());
        std::vector<double> bt, pt, p50, p99, bp50, bp99, fills, rfaults;
        auto failed = [&](const std::string& why) {
            r.failure = why;
            error(r.id + ": " + why);
        };
        for (unsigned rep = 0; rep < o.repeat && r.failure.empty(); ++rep) {
            // The baseline.
            if (auto p = prepare(s.cold); !p) {
                failed(p.error().message);
                break;
            }
            Result<Measure> b = Error{};
            switch (s.base) {
            case Base::Mmap: b = measure_mmap(fd, bytes, pages, s.threads, MADV_NORMAL); break;
            case Base::MmapSequential: b = measure_mmap(fd, bytes, pages, s.threads, MADV_SEQUENTIAL); break;
            case Base::MmapRandom: b = measure_mmap(fd, bytes, pages, s.threads, MADV_RANDOM); break;
            case Base::UffdLoop: b = measure_uffd_loop(fd, bytes, pages, s.threads, &info.uffd_loop); break;
            case Base::Pagerd1t:
                if (auto d1 = measure_pagerd(conn, fd, bytes, pages, 1, plain)) {
                    b = d1->m;
                    if (d1->have_region && d1->region.faults) {
                        bp50.push_back(static_cast<double>(d1->region.latency_p50_ns));
                        bp99.push_back(static_cast<double>(d1->region.latency_p99_ns));
                    }
                } else {
                    b = d1.error();
                }
                break;
            }
            if (!b) {
                failed("baseline " + s.baseline + ": " + b.error().message);
                break;
            }
            // The pagerd side.
            if (auto p = prepare(s.cold); !p) {
                failed(p.error().message);
                break;
            }
            if (!conn.daemon_alive()) {
                failed("the connection to pagerd was lost; remaining cases not run");
                daemon_lost = true;
                break;
            }
            PagerdSetup ps = plain;
            ps.prefetch = s.prefetch;
            ps.fill = s.fill;
            auto d = measure_pagerd(conn, fd, bytes, pages, s.threads, ps);
            if (!d) {
                failed("pagerd side: " + d.error().message);
                break;
            }
            if (b->checksum != d->m.checksum) {
                failed("the bytes touched through pagerd differ from those through the baseline (sum " +
                       std::to_string(d->m.checksum) + " instead of " + std::to_string(b->checksum) + ")");
                break;
            }
            bt.push_back(b->seconds);
            pt.push_back(d->m.seconds);
            if (d->fill_seconds >= 0) fills.push_back(d->fill_seconds);
            if (!d->have_region) r.region_note = d->region_note;
            if (d->have_region) {
                r.have_region = true;
                rfaults.push_back(static_cast<double>(d->region.faults));
                for (std::size_t k = 0; k < r.histogram.size(); ++k) r.histogram[k] += d->region.latency_histogram[k];
                if (d->region.faults) {
                    p50.push_back(static_cast<double>(d->region.latency_p50_ns));
                    p99.push_back(static_cast<double>(d->region.latency_p99_ns));
                }
            }
            if (d->cpu_seconds >= 0) r.cpu_seconds = std::max(0.0, r.cpu_seconds) + d->cpu_seconds;
            if (d->have_faults) {
                r.have_daemon_faults = true;
                r.daemon_faults += d->faults;
                r.pages_prefetched += d->pages_prefetched;
            }
            r.faults_after_fill = std::max(r.faults_after_fill, d->faults_after_fill);
        }
        if (r.failure.empty() && bt.size() == o.repeat) {
            r.base_seconds = median(bt);
            r.pagerd_seconds = median(pt);
            r.p50_ns = median(p50);
            r.p99_ns = median(p99);
            r.base_p50_ns = median(bp50);
            r.base_p99_ns = median(bp99);
            r.fill_seconds = median(fills);
            r.region_faults = rfaults.empty() ? 0 : static_cast<std::uint64_t>(median(rfaults));
        }
        results.push_back(r);
    }

    WriteSetup ws;
    ws.fd = write_fd;
    ws.pages = o.write_pages;
    ws.threads = info.threads;
    ws.repeat = o.repeat;
    ws.progress = progress;
    ws.error = error;
    if (info.writes && !daemon_lost) info.write_cases = run_write_cases(*connection, ws);
    if (info.flushes && !daemon_lost) info.flush_cases = run_flush_cases(*connection, ws);

    if (connection) {
        if (auto st = connection->status()) {
            info.status = st.value();
            info.have_status = true;
        } else {
            error("pagerd status: " + st.error().message);
        }
    }
    if (info.daemon_pid > 0) {
        info.daemon_peak_rss_kib = process_vm_kib(info.daemon_pid, "VmHWM");
        info.daemon_rss_kib = process_vm_kib(info.daemon_pid, "VmRSS");
    }
    if (!o.plot.empty() && any_reads) {
        if (auto p = write_plot(gnuplot, o.plot, info, results); !p) error("--plot: " + p.error().message);
    }
    if (!o.plot.empty() && info.caches) {
        const std::string png = cache_plot_path(o.plot, any_reads);
        if (auto p = write_cache_plot(gnuplot, png, info); !p) error("--plot: " + p.error().message);
    }
    if (o.json)
        print_json(info, results);
    else
        print_table(info, results);
    std::fflush(stdout);
    return info.errors.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc >= 2 && std::strcmp(argv[1], k_cache_child_flag) == 0) return cache_child_main(argc, argv);
    Options o;
    CLI::App app{"pagerd-bench: how fast first touches of one file are through pagerd compared "
                 "with a baseline measured in the same run (kernel mmap with and without madvise, "
                 "an in-process userfaultfd loop, pagerd itself with 1 thread), each against a "
                 "target ratio; how much a first write to a Shared region costs with each "
                 "tracking strategy, and how fast Connection::flush writes, against in-process "
                 "baselines. Prints aligned tables (or --json), optionally a PNG (--plot)."};
    app.footer(k_footer);
    auto* file_opt = app.add_option("--file", o.file,
                                    "File to read (default: a temporary file of --size bytes of non-zero "
                                    "pseudo-random data in --tmpdir, removed at the end)")
                         ->check(CLI::ExistingFile);
    app.add_option("--size", o.size, "Size of the temporary file of the read cases, e.g. 64MiB, 1GiB (default 1 GiB)")
        ->transform(CLI::AsSizeValue(false))
        ->excludes(file_opt);
    app.add_option("--tmpdir", o.tmpdir, "Directory of the temporary file(s) (default /var/tmp)")
        ->check(CLI::ExistingDirectory);
    app.add_option("--threads", o.threads,
                   "Threads of the N-thread extra read and write cases (default: number of CPUs; "
                   "the table's 2-thread case always uses 2)")
        ->check(CLI::Range(1u, 1024u));
    app.add_option("--random-pages", o.random_pages,
                   "Distinct 4 KiB pages touched by the random cases (default 20000; at most the file's pages)")
        ->check(CLI::PositiveNumber);
    app.add_option("--socket", o.socket, "Use the pagerd already listening on this socket (default: start one)");
    auto* pagerd_opt = app.add_option("--pagerd", o.pagerd,
                                      "pagerd executable to start (default: ../daemon/pagerd next to "
                                      "pagerd-bench, else pagerd next to it, else on $PATH)");
    pagerd_opt->excludes("--socket");
    app.add_option("--daemon-arg", o.daemon_args,
                   "An option for the pagerd it starts, e.g. --daemon-arg=--poll-us=50 (repeatable)")
        ->excludes("--socket")
        ->allow_extra_args(false);
    app.add_option("--repeat", o.repeat, "Runs of every case; the median is shown (default 1)")
        ->check(CLI::Range(1u, 1000u));
    app.add_option("--cases", o.cases,
                   "Groups to run, comma-separated: read (the table of targets), extra (more pagerd "
                   "against mmap read cases, no target), write (write faults), flush (flush "
                   "throughput), cache (the daemon's page cache against the kernel's: memory cgroups, "
                   "shared readers; about 75 s, so not in the default), second-copy (loads that leave no "
                   "second copy in the kernel's page cache: O_DIRECT, RWF_DONTCACHE, fadvise; about 4 min, "
                   "not in the default), nbd (an NBD export with a delay per read through pagerd against nbdcopy and "
                   "synchronous libnbd reads; about 45 s, not in the default), preload (python3 + numpy.memmap summing the file "
                   "with and without pagerd-run, one process and a fork pool, cold and hot; about 30 s, not in "
                   "the default) (default read,extra,write,flush)")
        ->delimiter(',')
        ->check(CLI::IsMember({"read", "extra", "write", "flush", "cache", "second-copy", "nbd", "preload"}));
    app.add_option("--pagerd-run", o.pagerd_run,
                   "pagerd-run of the preload cases (default: ../preload/pagerd-run next to pagerd-bench, else "
                   "pagerd-run next to it, else on $PATH)");
    app.add_option("--preload-script", o.preload_script,
                   "The preload cases' Python script (default: preload_sum.py next to pagerd-bench, else bench/ of "
                   "the source tree)");
    app.add_option("--python", o.python, "python3 of the preload cases, with numpy (default /usr/bin/python3)");
    app.add_option("--preload-workers", o.preload_workers, "Workers of the preload pool cases (default 4)")
        ->check(CLI::Range(1u, 64u));
    app.add_option("--nbd-random-pages", o.nbd_random_pages,
                   "Distinct 4 KiB pages read by the NBD random cases (default 4000)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 24));
    app.add_option("--nbd-delay", o.nbd_delay,
                   "Delay of every read request of the NBD export: nbdkit-delay-filter's delay-read, SECS or NNms "
                   "(default 1ms)");
    app.add_option("--nbd-threads", o.nbd_threads, "Threads of NBD case 2 (default 8)")->check(CLI::Range(1u, 256u));
    app.add_option("--nbd-connections", o.nbd_connections,
                   "--store-connections values of the NBD sequential sweep, comma-separated (default 1,2,4)")
        ->delimiter(',')
        ->check(CLI::Range(1u, 64u));
    app.add_option("--nbd-readahead", o.nbd_readahead,
                   "--readahead-max values of the NBD sequential sweep, comma-separated, e.g. 4MiB,16MiB "
                   "(default 4MiB,16MiB,64MiB)")
        ->delimiter(',')
        ->transform(CLI::AsSizeValue(false));
    app.add_option("--nbd-nbdcopy", o.nbd_nbdcopy,
                   "nbdcopy runs with fewer connections or requests in flight, CxR comma-separated, e.g. 1x16 "
                   "(--connections=1 --requests=16) (default 1x4,1x16,1x64)")
        ->delimiter(',')
        ->check([](const std::string& v) -> std::string {
            const std::size_t x = v.find('x');
            const bool ok = v.size() <= 12 && x != std::string::npos && x > 0 && x + 1 < v.size() &&
                            v.find_first_not_of("0123456789x") == std::string::npos && v.find('x', x + 1) == std::string::npos &&
                            std::stoul(v.substr(0, x)) > 0 && std::stoul(v.substr(x + 1)) > 0;
            return ok ? "" : "must be CONNECTIONSxREQUESTS, e.g. 1x16";
        });
    app.add_option("--zipf-reads", o.zipf_reads, "4 KiB reads of cache case 2 (Zipf 0.99) (default 200000)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 32));
    app.add_option("--write-pages", o.write_pages,
                   "4 KiB pages written by each write and flush case (default 16384 = 64 MiB)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 28));
    app.add_flag("--json", o.json, "Print one JSON object with every figure instead of the table");
    app.add_option("--plot", o.plot,
                   "Also draw the read cases into this PNG file with gnuplot (GB/s of both sides; "
                   "fault latency p50/p99), and the cache cases into FILE-cache.png next to it (into "
                   "this file when no read case ran)");
    CLI11_PARSE(app, argc, argv);
    try {
        return run(o);
    } catch (const std::exception& e) {
        return fail(e.what());
    }
}
