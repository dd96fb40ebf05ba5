// pagerd-bench: first-touch reads of one file through kernel mmap and through pagerd,
// sequential and random, hot and cold page cache, 1 and N threads; write faults and flush
// throughput of Shared regions against in-process baselines; in one run.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <limits>

#include "bench.hpp"

namespace {

using namespace pagerd;
using namespace pagerd::bench;

struct Options {
    std::string file;
    std::uint64_t size = 256ull << 20;
    std::string tmpdir = "/var/tmp";
    unsigned threads = 0;
    std::string socket;
    std::string pagerd;
    std::uint64_t random_pages = 20000;
    unsigned repeat = 1;
    bool json = false;
    std::vector<std::string> cases = {"read", "write", "flush"};
    std::uint64_t write_pages = 16384;
};

struct CaseSpec {
    std::string name;
    bool random = false;
    bool cold = false;
    unsigned threads = 1;
};

constexpr const char* k_footer = R"(
Read cases (--cases read): for each pattern (seq: one byte of every 4 KiB page of the file,
in order; rand: --random-pages distinct pages drawn by a fixed-seed PRNG, the same set every
run and for both sides), for a HOT page cache (the file read once first) and a COLD one
(fdatasync, posix_fadvise(POSIX_FADV_DONTNEED) over the file, then "1" into
/proc/sys/vm/drop_caches when writable, before every measurement), with 1 thread and with
--threads threads (the pages split into contiguous shares), the file is read through
  mmap    a fresh mmap(MAP_PRIVATE, PROT_READ) of the whole file, and
  pagerd  a fresh pagerd region (Connection::map_fd, Access::ReadOnly) of the whole file.
Every measurement maps anew so every page is really touched first, and unmaps after; the
clock covers the touches only, not the map and unmap calls. Cold cases run only when a
drop was checked to work (mincore) at the start; otherwise they are skipped with a note.

Figures per case: pages touched, µs per page (wall time / pages), GB/s (4 KiB x pages /
wall time) for each side, and pagerd/mmap, the ratio of throughput (above 1: pagerd was
faster). At the end: the daemon's fault latency p50/p99 from its status (cumulative).

Checks: the sum of the touched bytes must be equal through both sides, and 64 of the pages
touched through pagerd are compared with pread of the file. A mismatch or a failed case is
reported and makes the exit status 1.

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
their own in --tmpdir). Without "read" in --cases the temporary file is --write-pages pages.

Daemon: without --socket, pagerd-bench starts its own pagerd on a temporary socket (from
--pagerd, else ../daemon/pagerd next to pagerd-bench as in the build tree, else pagerd next
to it, else pagerd on $PATH), waits up to 5 s for it to accept, and stops it with SIGTERM
at the end. Cold cases need the right to drop the cache (run as root).)";

volatile sig_atomic_t g_stop_signal = 0;  // set when stopping on SIGINT / SIGTERM / SIGHUP

void on_sigbus(int)
{
    if (g_stop_signal) ::raise(g_stop_signal);  // the daemon was stopped by on_stop: die of that signal
    static const char msg[] = "pagerd-bench: SIGBUS while touching a mapping (did pagerd stop?)\n";
    [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    daemon_emergency_cleanup();
    ::_exit(1);
}

void on_stop(int sig)
{
    ::signal(sig, SIG_DFL);
    g_stop_signal = sig;
    daemon_emergency_cleanup();
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

int run(const Options& o)
{
    ::signal(SIGBUS, on_sigbus);
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, on_stop);
    const bool progress = ::isatty(STDERR_FILENO);
    RunInfo info;
    info.repeat = o.repeat;
    auto wanted = [&o](const char* c) { return std::find(o.cases.begin(), o.cases.end(), c) != o.cases.end(); };
    info.reads = wanted("read");
    info.writes = wanted("write");
    info.flushes = wanted("flush");
    const std::uint64_t write_bytes = o.write_pages * k_page;

    if (progress && o.file.empty()) std::fprintf(stderr, "creating the file...\n");
    auto file = o.file.empty() ? create_temp_file(o.tmpdir, info.reads ? o.size : write_bytes) : open_file(o.file);
    if (!file) return fail(file.error().message);
    const int fd = file->fd.get();
    const std::uint64_t bytes = file->bytes;
    if (bytes / k_page > std::numeric_limits<std::uint32_t>::max()) return fail("the file is too large (16 TiB at most)");
    info.file = file->path;
    info.file_bytes = bytes;
    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    info.threads = o.threads ? o.threads : static_cast<unsigned>(std::max(1L, cpus));

    const ColdProbe cold = info.reads ? probe_cold(fd, bytes) : ColdProbe{};
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

    std::unique_ptr<Daemon> daemon;
    std::string socket = o.socket;
    if (socket.empty()) {
        auto started = Daemon::start(o.pagerd);
        if (!started) return fail(started.error().message);
        daemon = std::move(started.value());
        socket = daemon->socket();
        info.daemon = daemon->exe() + " (started for this run on " + socket + ")";
        info.own_daemon = true;
    } else {
        info.daemon = "running daemon at " + socket;
    }
    auto connected = connect_with_retry(socket, daemon ? 5000 : 0, daemon.get());
    if (!connected) return fail(connected.error().message);
    libclient::Connection& conn = *connected.value();

    const std::vector<std::uint32_t> seq = sequential_pages(bytes / k_page);
    const std::vector<std::uint32_t> rnd = random_pages(bytes / k_page, o.random_pages);
    info.random_pages = info.reads ? rnd.size() : 0;
    std::vector<CaseSpec> specs;
    for (const bool random : {false, true})
        for (const bool is_cold : {false, true}) {
            if (is_cold && !cold.possible) continue;
            for (const unsigned t : {1u, info.threads}) {
                if (t == 1 && !specs.empty() && specs.back().threads == 1 && specs.back().random == random &&
                    specs.back().cold == is_cold)
                    continue;  // --threads 1: the N-thread case would repeat the 1-thread case
                const std::string name = std::string(random ? "rand" : "seq") + (is_cold ? "-cold-" : "-hot-") +
                                         std::to_string(t) + "t";
                specs.push_back({name, random, is_cold, t});
            }
        }
    if (!info.reads) specs.clear();

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
    auto error = [&](const std::string& e) {
        std::fprintf(stderr, "pagerd-bench: error: %s\n", e.c_str());
        info.errors.push_back(e);
    };

    std::vector<CaseResult> results;
    bool daemon_lost = false;
    for (std::size_t i = 0; i < specs.size() && !daemon_lost; ++i) {
        const CaseSpec& s = specs[i];
        const auto& pages = s.random ? rnd : seq;
        if (progress) std::fprintf(stderr, "[%zu/%zu] %s\n", i + 1, specs.size(), s.name.c_str());
        CaseResult r{s.name, pages.size()};
        std::vector<double> mt, pt;
        for (unsigned rep = 0; rep < o.repeat; ++rep) {
            if (auto p = prepare(s.cold); !p) {
                error(s.name + ": " + p.error().message);
                break;
            }
            auto m = measure_mmap(fd, bytes, pages, s.threads);
            if (auto p = prepare(s.cold); !p) {
                error(s.name + ": " + p.error().message);
                break;
            }
            if (!conn.daemon_alive()) {
                error("the connection to pagerd was lost; remaining cases not run");
                daemon_lost = true;
                break;
            }
            auto d = measure_pagerd(conn, fd, bytes, pages, s.threads);
            if (!m) error(s.name + " mmap: " + m.error().message);
            if (!d) error(s.name + " pagerd: " + d.error().message);
            if (!m || !d) break;
            if (m->checksum != d->checksum) {
                error(s.name + ": the bytes touched through pagerd differ from those through mmap (sum " +
                      std::to_string(d->checksum) + " instead of " + std::to_string(m->checksum) + ")");
                break;
            }
            mt.push_back(m->seconds);
            pt.push_back(d->seconds);
        }
        if (mt.size() == o.repeat) {
            r.mmap_seconds = median(mt);
            r.pagerd_seconds = median(pt);
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
    if (info.writes && !daemon_lost) info.write_cases = run_write_cases(conn, ws);
    if (info.flushes && !daemon_lost) info.flush_cases = run_flush_cases(conn, ws);

    if (auto st = conn.status()) {
        info.status = st.value();
        info.have_status = true;
    } else {
        error("pagerd status: " + st.error().message);
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
    Options o;
    CLI::App app{"pagerd-bench: how fast first touches of one file are through pagerd compared "
                 "with kernel mmap, for sequential and random 4 KiB pages, hot and cold page "
                 "cache, 1 and N threads; how much a first write to a Shared region costs with "
                 "each tracking strategy, and how fast Connection::flush writes, against "
                 "in-process baselines. Prints aligned tables (or --json)."};
    app.footer(k_footer);
    auto* file_opt = app.add_option("--file", o.file,
                                    "File to read (default: a temporary file of --size bytes of non-zero "
                                    "pseudo-random data in --tmpdir, removed at the end)")
                         ->check(CLI::ExistingFile);
    app.add_option("--size", o.size, "Size of the temporary file of the read cases, e.g. 256MiB, 1GiB (default 256 MiB)")
        ->transform(CLI::AsSizeValue(false))
        ->excludes(file_opt);
    app.add_option("--tmpdir", o.tmpdir, "Directory of the temporary file(s) (default /var/tmp)")
        ->check(CLI::ExistingDirectory);
    app.add_option("--threads", o.threads, "Threads of the N-thread cases (default: number of CPUs)")
        ->check(CLI::Range(1u, 1024u));
    app.add_option("--random-pages", o.random_pages,
                   "Distinct 4 KiB pages touched by the random cases (default 20000; at most the file's pages)")
        ->check(CLI::PositiveNumber);
    app.add_option("--socket", o.socket, "Use the pagerd already listening on this socket (default: start one)");
    auto* pagerd_opt = app.add_option("--pagerd", o.pagerd,
                                      "pagerd executable to start (default: ../daemon/pagerd next to "
                                      "pagerd-bench, else pagerd next to it, else on $PATH)");
    pagerd_opt->excludes("--socket");
    app.add_option("--repeat", o.repeat, "Runs of every case; the median is shown (default 1)")
        ->check(CLI::Range(1u, 1000u));
    app.add_option("--cases", o.cases,
                   "Groups to run, comma-separated: read (mmap against pagerd), write (write faults), "
                   "flush (flush throughput) (default read,write,flush)")
        ->delimiter(',')
        ->check(CLI::IsMember({"read", "write", "flush"}));
    app.add_option("--write-pages", o.write_pages,
                   "4 KiB pages written by each write and flush case (default 16384 = 64 MiB)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 28));
    app.add_flag("--json", o.json, "Print one JSON object with every figure instead of the table");
    CLI11_PARSE(app, argc, argv);
    try {
        return run(o);
    } catch (const std::exception& e) {
        return fail(e.what());
    }
}
