// --cases preload: an unmodified program (Debian's python3 + numpy, bench/preload_sum.py)
// summing the file as a numpy.memmap of uint64, with and without pagerd-run, in the same run:
// one process cold and hot, and a multiprocessing pool of forked workers summing one shared
// mapping (time and memory). Every pagerd side has a fresh daemon (its cache empty).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Error sys_error(const std::string& what)
{
    const int e = errno;
    return Error::system(e, what + ": " + std::strerror(e));
}

bool exited_with_zero(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

bool executable(const std::string& path) { return !path.empty() && ::access(path.c_str(), X_OK) == 0; }

std::string canonical(const std::string& path)
{
    char* real = ::realpath(path.c_str(), nullptr);
    if (!real) return path;
    std::string s(real);
    std::free(real);
    return s;
}

std::string self_dir()
{
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return {};
    std::string s(buf, static_cast<std::size_t>(n));
    return s.substr(0, s.rfind('/'));
}

std::string first_line(const std::string& path)
{
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
}

// The named copy of an unlinked temporary file (python opens the array by name).
char g_copy[512];

struct NamedCopy {
    std::string path;
    ~NamedCopy()
    {
        if (path.empty()) return;
        g_copy[0] = '\0';
        ::unlink(path.c_str());
    }
};

Result<void> copy_to_named(int fd, std::uint64_t bytes, const std::string& dir, NamedCopy& out)
{
    std::string name = dir + "/pagerd-bench-preload.XXXXXX";
    util::UniqueFd to(::mkostemp(name.data(), O_CLOEXEC));
    if (!to) return sys_error("cannot create a file in " + dir);
    out.path = name;
    const std::size_t n = std::min(name.size(), sizeof g_copy - 1);
    std::memcpy(g_copy, name.data(), n);
    g_copy[n] = '\0';
    loff_t in_off = 0, out_off = 0;
    while (static_cast<std::uint64_t>(in_off) < bytes) {
        const ssize_t c = ::copy_file_range(fd, &in_off, to.get(), &out_off,
                                            static_cast<std::size_t>(bytes - static_cast<std::uint64_t>(in_off)), 0);
        if (c < 0 && errno == EINTR) continue;
        if (c <= 0) return sys_error("copying the file to " + name);
    }
    if (::fdatasync(to.get()) != 0) return sys_error("fdatasync of " + name);
    return {};
}

struct Ran {
    int status = -1;
    std::string out, err;
    double wall = -1, cpu = -1;
};

std::string read_memfd(int fd)
{
    std::string s;
    char buf[65536];
    off_t off = 0;
    for (;;) {
        const ssize_t r = ::pread(fd, buf, sizeof buf, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        s.append(buf, static_cast<std::size_t>(r));
        off += r;
    }
    return s;
}

// Runs argv (argv[0] a path) with stdout and stderr into memfds, timed from fork to exit;
// killed after 600 s.
Result<Ran> run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env = {})
{
    util::UniqueFd out(::memfd_create("preload-out", MFD_CLOEXEC)), err(::memfd_create("preload-err", MFD_CLOEXEC));
    if (!out || !err) return sys_error("memfd_create");
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const auto t0 = Clock::now();
    const pid_t pid = ::fork();
    if (pid < 0) return sys_error("fork");
    if (pid == 0) {
        const int in = ::open("/dev/null", O_RDONLY);
        if (in >= 0) ::dup2(in, 0);
        ::dup2(out.get(), 1);
        ::dup2(err.get(), 2);
        ::signal(SIGBUS, SIG_DFL);
        for (const int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, SIG_DFL);
        for (const auto& kv : env) ::putenv(const_cast<char*>(kv.c_str()));
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    Ran r;
    struct rusage ru {};
    int status = 0;
    for (;;) {
        const pid_t w = ::wait4(pid, &status, WNOHANG, &ru);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) return sys_error("wait4");
        if (since(t0) > 600) {
            ::kill(pid, SIGKILL);
            ::wait4(pid, &status, 0, &ru);
            break;
        }
        ::usleep(1000);
    }
    r.wall = since(t0);
    r.status = status;
    r.cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
            static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    r.out = read_memfd(out.get());
    r.err = read_memfd(err.get());
    return r;
}

std::string describe(int status)
{
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

std::string tail(const std::string& s, std::size_t n = 600)
{
    return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// How a run ended, for a failure: its status and the end of its stderr, or why it did not run.
std::string outcome(const Result<Ran>& r)
{
    if (!r) return r.error().message;
    if (WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0)
        return "no \"sum=...\" line in its output (stdout: " + tail(r->out, 300) + "; stderr: " + tail(r->err) + ")";
    return describe(r->status) + ": " + tail(r->err);
}

// "sum=S seconds=T rss=R pss=P workers=W" on the last line of the script's output.
bool parse(const std::string& out, PreloadSide& side)
{
    std::string last;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
        if (line.rfind("sum=", 0) == 0) last = line;
    if (last.empty()) return false;
    std::istringstream words(last);
    bool have_sum = false;
    for (std::string w; words >> w;) {
        const std::size_t eq = w.find('=');
        if (eq == std::string::npos) continue;
        const std::string k = w.substr(0, eq), v = w.substr(eq + 1);
        try {
            if (k == "sum") side.sum = std::stoull(v), have_sum = true;
            else if (k == "seconds") side.seconds = std::stod(v);
            else if (k == "rss") side.rss = std::stoull(v);
            else if (k == "pss") side.pss = std::stoull(v);
            else if (k == "workers") side.workers = static_cast<unsigned>(std::stoul(v));
            else if (k == "also_rss") side.daemon_rss = std::stoull(v);
            else if (k == "also_pss") side.daemon_pss = std::stoull(v);
        } catch (const std::exception&) {
            return false;
        }
    }
    return have_sum && side.seconds > 0;
}

// Samples the daemon's cache_bytes every 10 ms from a connection of its own.
class CacheSampler {
public:
    explicit CacheSampler(libclient::Connection& conn) : m_conn(conn)
    {
        m_thread = std::thread([this] {
            while (!m_stop.load()) {
                if (auto st = m_conn.status()) m_peak = std::max(m_peak.load(), st->cache_bytes);
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
        });
    }
    ~CacheSampler() { stop(); }
    std::uint64_t stop()
    {
        if (m_thread.joinable()) {
            m_stop = true;
            m_thread.join();
        }
        return m_peak.load();
    }

private:
    libclient::Connection& m_conn;
    std::atomic<bool> m_stop{false};
    std::atomic<std::uint64_t> m_peak{0};
    std::thread m_thread;
};

struct Spec {
    std::string num, name, title;
    bool pool = false, cold = false;
};

}  // namespace

std::string find_pagerd_run()
{
    const std::string dir = self_dir();
    if (!dir.empty()) {
        if (executable(dir + "/../preload/pagerd-run")) return canonical(dir + "/../preload/pagerd-run");
        if (executable(dir + "/pagerd-run")) return canonical(dir + "/pagerd-run");
    }
    const char* path = std::getenv("PATH");
    std::string rest = path ? path : "";
    while (!rest.empty()) {
        const std::size_t colon = rest.find(':');
        const std::string d = rest.substr(0, colon);
        rest = colon == std::string::npos ? "" : rest.substr(colon + 1);
        if (!d.empty() && executable(d + "/pagerd-run")) return d + "/pagerd-run";
    }
    return {};
}

std::string find_preload_script()
{
    const std::string dir = self_dir();
    if (!dir.empty() && ::access((dir + "/preload_sum.py").c_str(), R_OK) == 0) return dir + "/preload_sum.py";
    const std::string src = std::string(PAGERD_BENCH_SOURCE_DIR) + "/preload_sum.py";
    if (::access(src.c_str(), R_OK) == 0) return src;
    return {};
}

void preload_emergency_cleanup() noexcept
{
    if (g_copy[0]) ::unlink(g_copy);
}

PreloadRun run_preload_cases(const PreloadSetup& s)
{
    PreloadRun run;
    const auto start = Clock::now();
    run.load = first_line("/proc/loadavg");
    run.workers = s.workers;
    run.python = s.python;
    const std::string w = std::to_string(s.workers);
    const std::vector<Spec> specs = {
        {"1", "single-cold", "numpy.memmap sum of the whole array in one process, cold", false, true},
        {"2", "single-hot", "the same, hot (kernel mmap: the kernel's page cache holds the file; pagerd-run: the daemon's cache holds it)", false, false},
        {"3", "pool" + w + "-cold", w + " forked workers (multiprocessing fork pool) each sum 1/" + w + " of one memmap, cold",
         true, true},
        {"4", "pool" + w + "-hot", "the same, hot", true, false},
    };
    auto fail_all = [&](const std::string& why) {
        s.error("preload cases: " + why);
        for (const auto& sp : specs) {
            PreloadCase c;
            c.num = sp.num;
            c.name = sp.name;
            c.title = sp.title;
            c.pool = sp.pool;
            c.cold = sp.cold;
            c.failure = why;
            run.cases.push_back(c);
        }
        run.seconds = since(start);
        return run;
    };
    run.pagerd_run = s.pagerd_run.empty() ? find_pagerd_run() : s.pagerd_run;
    run.script = s.script.empty() ? find_preload_script() : s.script;
    if (run.pagerd_run.empty() || !executable(run.pagerd_run))
        return fail_all("pagerd-run not found (--pagerd-run; looked for ../preload/pagerd-run next to pagerd-bench, "
                        "pagerd-run next to it and on $PATH)");
    if (run.script.empty()) return fail_all("preload_sum.py not found (--preload-script)");
    if (!executable(s.python)) return fail_all(s.python + " is not there (Debian: apt-get install python3 python3-numpy)");
    if (auto v = run_program({s.python, "-c", "import numpy; print(numpy.__version__)"}); v && exited_with_zero(v->status))
        run.numpy = v->out.substr(0, v->out.find('\n'));
    else
        return fail_all("numpy cannot be imported by " + s.python + " (Debian: apt-get install python3-numpy)" +
                        (v ? ": " + tail(v->err, 300) : ""));

    NamedCopy copy;
    std::string file = s.path;
    if (file.empty()) {
        if (s.progress) std::fprintf(stderr, "preload: copying the file to a named one for python3...\n");
        if (auto c = copy_to_named(s.fd, s.bytes, s.tmpdir, copy); !c) return fail_all(c.error().message);
        file = copy.path;
        run.array_file = copy.path + " (a named copy of the temporary file, removed at the end)";
    } else {
        run.array_file = file;
    }
    const std::string real = canonical(file);
    // Cold and hot act on the file python3 reads (the named copy, when there is one).
    util::UniqueFd own(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!own) return fail_all("cannot open " + file + ": " + std::strerror(errno));
    const int fd = own.get();

    for (const auto& sp : specs) {
        PreloadCase c;
        c.num = sp.num;
        c.name = sp.name;
        c.title = sp.title;
        c.pool = sp.pool;
        c.cold = sp.cold;
        if (sp.cold && !s.cold_possible) {
            c.skipped = "cold cases not possible here (" + s.cold_note + ")";
            run.cases.push_back(c);
            continue;
        }
        if (s.progress) std::fprintf(stderr, "preload %s: %s\n", c.num.c_str(), c.name.c_str());
        std::vector<std::string> prog{s.python, run.script, sp.pool ? "pool" : "single", file};
        if (sp.pool) prog.push_back(w);
        auto failed = [&](const std::string& why) {
            c.failure = why;
            s.error("preload " + c.num + " " + c.name + ": " + why);
        };
        auto prepare = [&]() -> Result<void> { return sp.cold ? make_cold(fd, s.bytes) : make_hot(fd, s.bytes); };

        // The kernel's mmap: python3 alone.
        if (auto p = prepare(); !p) {
            failed(p.error().message);
            run.cases.push_back(c);
            continue;
        }
        auto k = run_program(prog);
        if (!k || !exited_with_zero(k->status) || !parse(k->out, c.kernel)) {
            failed("python3 without pagerd-run: " + outcome(k));
            run.cases.push_back(c);
            continue;
        }
        c.kernel.wall = k->wall;
        c.kernel.cpu = k->cpu;

        // pagerd-run, with a fresh daemon.
        auto started = Daemon::start(s.pagerd, s.daemon_args);
        if (!started) {
            failed(started.error().message);
            run.cases.push_back(c);
            continue;
        }
        auto& daemon = *started.value();
        std::string args;
        for (const auto& a : s.daemon_args) args += " " + a;
        run.daemons.push_back(c.num + ": " + daemon.exe() + args);
        auto connected = connect_with_retry(daemon.socket(), 5000, &daemon);
        if (!connected) {
            failed(connected.error().message);
            run.cases.push_back(c);
            continue;
        }
        libclient::Connection& conn = *connected.value();
        std::vector<std::string> under{run.pagerd_run, "--socket", daemon.socket(), "--debug", "--"};
        under.insert(under.end(), prog.begin(), prog.end());
        const std::vector<std::string> env{"PRELOAD_SUM_ALSO=" + std::to_string(daemon.pid())};
        // Hot: a first run fills the daemon's cache, which a region of this connection keeps
        // open (a file's cache closes with its last region) for the measured run.
        std::optional<libclient::Region> keep;
        if (!sp.cold) {
            auto r = conn.map_fd(fd, {0, s.bytes, libclient::Access::ReadOnly});
            if (!r) {
                failed("map_fd of the file, to keep the daemon's cache of it open: " + r.error().message);
                run.cases.push_back(c);
                continue;
            }
            keep = r.value();
            auto warm = run_program(under, env);
            if (!warm || !exited_with_zero(warm->status)) {
                failed("the first (warming) run under pagerd-run: " + outcome(warm));
                run.cases.push_back(c);
                continue;
            }
        }
        if (auto p = prepare(); !p) {
            failed(p.error().message);
            run.cases.push_back(c);
            continue;
        }
        auto st0 = conn.status();
        const double cpu0 = process_cpu_seconds(daemon.pid());
        CacheSampler sampler(conn);
        auto d = run_program(under, env);
        c.pagerd.cache_peak = sampler.stop();
        const double cpu1 = process_cpu_seconds(daemon.pid());
        auto st1 = conn.status();
        if (!d || !exited_with_zero(d->status) || !parse(d->out, c.pagerd)) {
            failed("python3 under pagerd-run: " + outcome(d));
            run.cases.push_back(c);
            continue;
        }
        c.pagerd.wall = d->wall;
        c.pagerd.cpu = d->cpu;
        if (cpu0 >= 0 && cpu1 >= 0) c.pagerd.daemon_cpu = cpu1 - cpu0;
        if (st0 && st1) {
            c.pagerd.faults = st1->faults - st0->faults;
            c.pagerd.cache_loads = st1->cache_loads - st0->cache_loads;
            c.pagerd.cache_hits = st1->cache_hits - st0->cache_hits;
            c.pagerd.bytes_read = st1->bytes_read - st0->bytes_read;
            c.pagerd.cache_peak = std::max(c.pagerd.cache_peak, st1->cache_bytes);
        }
        std::istringstream lines(d->err);
        for (std::string line; std::getline(lines, line);) {
            if (line.rfind("pagerd-preload: ", 0) != 0) continue;
            if (line.find(file + ":") == std::string::npos && line.find(real + ":") == std::string::npos) continue;
            c.pagerd.debug += (c.pagerd.debug.empty() ? "" : "; ") + line;
            if (line.size() >= 7 && line.compare(line.size() - 7, 7, ": taken") == 0) c.pagerd.taken = true;
        }
        if (c.kernel.sum != c.pagerd.sum)
            failed("the sum under pagerd-run (" + std::to_string(c.pagerd.sum) + ") differs from the sum without it (" +
                   std::to_string(c.kernel.sum) + ")");
        else if (!c.pagerd.taken)
            failed("the preload library did not take the file (" +
                   (c.pagerd.debug.empty() ? std::string("no debug line about it") : c.pagerd.debug) + ")");
        else if (sp.pool && (c.kernel.workers != s.workers || c.pagerd.workers != s.workers))
            c.notes.push_back("workers that summed a part: " + std::to_string(c.kernel.workers) + " without, " +
                              std::to_string(c.pagerd.workers) + " with pagerd-run");
        if (keep) {
            if (auto u = conn.unmap(*keep); !u) c.notes.push_back("unmap of the region that kept the cache: " + u.error().message);
        }
        if (!daemon.exited().empty()) failed("the daemon ended during the case: " + daemon.exited());
        run.cases.push_back(c);
    }
    run.seconds = since(start);
    return run;
}

}  // namespace pagerd::bench
