// --cases nbd: an NBD export served by nbdkit with a delay per read request, read through
// pagerd (map_store) against nbdcopy (sequential) and synchronous libnbd reads (random),
// measured in the same run; every pagerd side with a fresh daemon (a cold cache).
#include <dirent.h>
#include <fcntl.h>
#include <libnbd.h>
#include <signal.h>
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
#include <map>
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

std::string on_path(const std::string& name)
{
    const char* path = std::getenv("PATH");
    std::string rest = path ? path : "/usr/bin:/bin";
    while (!rest.empty()) {
        const std::size_t colon = rest.find(':');
        const std::string d = rest.substr(0, colon);
        rest = colon == std::string::npos ? "" : rest.substr(colon + 1);
        if (!d.empty() && ::access((d + "/" + name).c_str(), X_OK) == 0) return d + "/" + name;
    }
    return {};
}

std::string slurp(const std::string& path)
{
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

std::string joined(const std::vector<std::string>& v)
{
    std::string s;
    for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
    return s;
}

// The named copy of an unlinked temporary file (nbdkit's file plugin opens by name), and
// the server's directory and pid: what nbd_emergency_cleanup() removes.
char g_copy[512];
char g_server_dir[256];
volatile sig_atomic_t g_server_pid = 0;
const char* const k_server_files[] = {"nbd.sock", "nbdkit.pid", "nbdkit.log", "nbdcopy.err"};

void copy_path(char* to, std::size_t size, const std::string& from)
{
    const std::size_t n = std::min(from.size(), size - 1);
    std::memcpy(to, from.data(), n);
    to[n] = '\0';
}

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
    std::string name = dir + "/pagerd-bench-nbd.XXXXXX";
    util::UniqueFd to(::mkostemp(name.data(), O_CLOEXEC));
    if (!to) return sys_error("cannot create a file in " + dir);
    out.path = name;
    copy_path(g_copy, sizeof g_copy, name);
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

// nbdkit serving one file read-only on a Unix socket, with the delay filter.
class Server {
public:
    static Result<std::unique_ptr<Server>> start(const std::string& file, const std::string& delay)
    {
        std::unique_ptr<Server> s(new Server);
        std::string dir = "/tmp/pagerd-bench-nbd.XXXXXX";
        if (!::mkdtemp(dir.data())) return sys_error("mkdtemp");
        s->m_dir = dir;
        copy_path(g_server_dir, sizeof g_server_dir, dir);
        s->m_socket = dir + "/" + k_server_files[0];
        s->m_pidfile = dir + "/" + k_server_files[1];
        s->m_log = dir + "/" + k_server_files[2];
        std::vector<std::string> args = {"nbdkit", "--foreground", "--exit-with-parent", "--readonly", "-U", s->m_socket,
                                         "-P", s->m_pidfile, "--filter=delay", "file", "file=" + file,
                                         "delay-read=" + delay};
        s->m_command = joined(args);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        const pid_t pid = ::fork();
        if (pid < 0) return sys_error("fork");
        if (pid == 0) {
            const int log = ::open(s->m_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (log >= 0) {
                ::dup2(log, STDOUT_FILENO);
                ::dup2(log, STDERR_FILENO);
            }
            ::execvp("nbdkit", argv.data());
            ::_exit(127);
        }
        s->m_pid = pid;
        g_server_pid = pid;
        // nbdkit writes its pid file once it accepts connections.
        const auto deadline = Clock::now() + std::chrono::seconds(20);
        for (struct stat st{}; ::stat(s->m_pidfile.c_str(), &st) != 0 || st.st_size == 0;) {
            int status = 0;
            if (::waitpid(pid, &status, WNOHANG) == pid) {
                s->m_pid = -1;
                return Error::system(ECHILD, "nbdkit exited at start: " + slurp(s->m_log));
            }
            if (Clock::now() > deadline) return Error::system(ETIMEDOUT, "nbdkit did not start within 20 s: " + slurp(s->m_log));
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return s;
    }
    ~Server()
    {
        g_server_pid = 0;
        if (m_pid > 0) {
            ::kill(m_pid, SIGTERM);
            int status = 0;
            bool reaped = false;
            for (int i = 0; i < 500 && !reaped; ++i) {
                reaped = ::waitpid(m_pid, &status, WNOHANG) == m_pid;
                if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            if (!reaped) {
                ::kill(m_pid, SIGKILL);
                ::waitpid(m_pid, &status, 0);
            }
        }
        for (const char* f : k_server_files) ::unlink((m_dir + "/" + f).c_str());
        if (!m_dir.empty()) ::rmdir(m_dir.c_str());
        g_server_dir[0] = '\0';
    }
    std::string uri() const { return "nbd+unix:///?socket=" + m_socket; }
    pid_t pid() const { return m_pid; }
    const std::string& command() const { return m_command; }
    const std::string& dir() const { return m_dir; }
    std::string alive()  // empty while it runs
    {
        int status = 0;
        if (m_pid > 0 && ::waitpid(m_pid, &status, WNOHANG) == m_pid) {
            m_pid = -1;
            return "nbdkit stopped: " + slurp(m_log);
        }
        return m_pid > 0 ? "" : "nbdkit is not running";
    }

private:
    Server() = default;
    std::string m_dir, m_socket, m_pidfile, m_log, m_command;
    pid_t m_pid = -1;
};

struct Timed {
    double seconds = -1;
    double cpu = -1;         // the baseline's own CPU time
    double server_cpu = -1;  // nbdkit's
    std::uint64_t checksum = 0;
};

// nbdcopy URI null: (its defaults), timed from fork to its exit.
Result<Timed> run_nbdcopy(Server& server, const std::vector<std::string>& extra)
{
    std::vector<std::string> args = {"nbdcopy"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.insert(args.end(), {server.uri(), "null:"});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string err = server.dir() + "/" + k_server_files[3];
    Timed t;
    const double cpu0 = process_cpu_seconds(server.pid());
    const auto t0 = Clock::now();
    const pid_t pid = ::fork();
    if (pid < 0) return sys_error("fork");
    if (pid == 0) {
        const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0) ::dup2(null, STDOUT_FILENO);
        if (e >= 0) ::dup2(e, STDERR_FILENO);
        ::execvp("nbdcopy", argv.data());
        ::_exit(127);
    }
    int status = 0;
    struct rusage ru{};
    while (::wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    t.seconds = since(t0);
    const double cpu1 = process_cpu_seconds(server.pid());
    if (cpu0 >= 0 && cpu1 >= 0) t.server_cpu = cpu1 - cpu0;
    t.cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
            static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return Error::system(EIO, joined(args) + " failed (status " + std::to_string(status) + "): " + slurp(err));
    return t;
}

// Compares `count` pages of memory (page i of the set at mem + pages[i] * 4 KiB when
// `mapped`, else at mem + i * 4 KiB) with pread of the file. Empty if equal.
std::string compare_pages(const unsigned char* mem, bool mapped, int fd, const std::vector<std::uint32_t>& pages)
{
    std::vector<unsigned char> buf(k_page);
    for (std::size_t i = 0; i < pages.size(); ++i) {
        const std::uint64_t off = std::uint64_t{pages[i]} * k_page;
        if (::pread(fd, buf.data(), k_page, static_cast<off_t>(off)) != static_cast<ssize_t>(k_page))
            return "pread of page " + std::to_string(pages[i]) + " failed";
        const unsigned char* m = mapped ? mem + off : mem + i * k_page;
        if (std::memcmp(m, buf.data(), k_page) != 0) return "page " + std::to_string(pages[i]) + " differs from the file";
    }
    return {};
}

// The whole mapping against the file, 1 MiB at a time.
std::string compare_all(const unsigned char* mem, int fd, std::uint64_t bytes)
{
    std::vector<unsigned char> buf(1u << 20);
    for (std::uint64_t off = 0; off < bytes; off += buf.size()) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), bytes - off));
        if (::pread(fd, buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
            return "pread at " + std::to_string(off) + " failed";
        if (std::memcmp(mem + off, buf.data(), n) != 0)
            for (std::size_t i = 0; i < n; i += k_page)
                if (std::memcmp(mem + off + i, buf.data() + i, std::min<std::size_t>(k_page, n - i)) != 0)
                    return "page " + std::to_string((off + i) / k_page) + " differs from the file";
    }
    return {};
}

// One connection, nbd_pread of 4 KiB per page, one request in flight; the loop is timed
// (not the connection). Every page read is compared with the file afterwards.
Result<Timed> run_libnbd_sync(Server& server, int fd, const std::vector<std::uint32_t>& pages, std::string* version)
{
    nbd_handle* h = ::nbd_create();
    if (!h) return Error::system(ENOMEM, std::string("nbd_create: ") + ::nbd_get_error());
    struct Closer {
        nbd_handle* h;
        ~Closer() { ::nbd_close(h); }
    } closer{h};
    if (version) *version = ::nbd_get_version(h);
    if (::nbd_connect_uri(h, server.uri().c_str()) == -1)
        return Error::system(ECONNREFUSED, std::string("nbd_connect_uri: ") + ::nbd_get_error());
    std::vector<unsigned char> buf(pages.size() * k_page);
    Timed t;
    const double cpu0 = process_cpu_seconds(server.pid());
    const double self0 = process_cpu_seconds(::getpid());
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < pages.size(); ++i) {
        if (::nbd_pread(h, buf.data() + i * k_page, k_page, std::uint64_t{pages[i]} * k_page, 0) == -1)
            return Error::system(EIO, "nbd_pread of page " + std::to_string(pages[i]) + ": " + ::nbd_get_error());
        t.checksum += buf[i * k_page + touch_offset(pages[i]) % k_page];
    }
    t.seconds = since(t0);
    const double cpu1 = process_cpu_seconds(server.pid());
    const double self1 = process_cpu_seconds(::getpid());
    if (cpu0 >= 0 && cpu1 >= 0) t.server_cpu = cpu1 - cpu0;
    if (self0 >= 0 && self1 >= 0) t.cpu = self1 - self0;  // the process: only this thread works meanwhile
    if (auto bad = compare_pages(buf.data(), false, fd, pages); !bad.empty())
        return Error::system(EBADMSG, "libnbd read bytes that differ from the file: " + bad);
    return t;
}

// utime+stime in clock ticks of every thread of a process, by thread id, with its name.
struct ThreadTicks {
    long long ticks = 0;
    std::string name;
};
std::map<int, ThreadTicks> thread_ticks(pid_t pid)
{
    std::map<int, ThreadTicks> out;
    const std::string base = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = ::opendir(base.c_str());
    if (!d) return out;
    while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream in(base + "/" + e->d_name + "/stat");
        std::string line;
        if (!std::getline(in, line)) continue;
        const std::size_t open = line.find('('), close = line.rfind(')');
        if (open == std::string::npos || close == std::string::npos) continue;
        std::istringstream rest(line.substr(close + 1));
        std::string field;
        long long utime = 0, stime = 0;
        for (int i = 3; i <= 15 && rest >> field; ++i) {
            if (i == 14) utime = std::atoll(field.c_str());
            if (i == 15) stime = std::atoll(field.c_str());
        }
        out[std::atoi(e->d_name)] = {utime + stime, line.substr(open + 1, close - open - 1)};
    }
    ::closedir(d);
    return out;
}

// The store figures sampled while the touches run, on a connection of its own.
class Sampler {
public:
    explicit Sampler(std::unique_ptr<libclient::Connection> conn) : m_conn(std::move(conn))
    {
        if (!m_conn) return;
        m_thread = std::thread([this] {
            while (!m_stop.load()) {
                if (auto st = m_conn->stores())
                    for (const auto& s : st.value())
                        if (s.kind == "nbd") {
                            ++samples;
                            inflight_sum += s.inflight;
                            inflight_max = std::max(inflight_max, s.inflight);
                            connections_max = std::max(connections_max, s.connections);
                        }
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        });
    }
    void stop()
    {
        m_stop.store(true);
        if (m_thread.joinable()) m_thread.join();
    }
    ~Sampler() { stop(); }
    unsigned samples = 0;
    std::uint64_t inflight_sum = 0;
    std::uint32_t inflight_max = 0, connections_max = 0;

private:
    std::unique_ptr<libclient::Connection> m_conn;
    std::atomic<bool> m_stop{false};
    std::thread m_thread;
};

struct PagerdTimed {
    double seconds = -1;  // map + touches (sequential) or touches alone (random)
    std::uint64_t checksum = 0;
    NbdSide side;
};

struct Spec {
    NbdCase c;
    std::vector<std::string> args;  // the pagerd's own options
    libclient::Prefetch prefetch = libclient::Prefetch::Sequential;
    bool local = false;  // map_fd of the export's file instead: the daemon's path without NBD
};

// A fresh pagerd (a cold cache), the whole export mapped ReadOnly, the pages touched.
Result<PagerdTimed> run_pagerd(const NbdSetup& s, Server& server, const Spec& spec, const std::vector<std::uint32_t>& pages)
{
    std::vector<std::string> args = s.daemon_args;
    args.push_back("--allow-store=" + server.uri());
    args.insert(args.end(), spec.args.begin(), spec.args.end());
    auto started = Daemon::start(s.pagerd, args);
    if (!started) return started.error();
    std::unique_ptr<Daemon> daemon = std::move(started.value());
    auto connected = connect_with_retry(daemon->socket(), 5000, daemon.get());
    if (!connected) return connected.error();
    libclient::Connection& conn = *connected.value();
    auto second = connect_with_retry(daemon->socket(), 5000, daemon.get());
    if (!second) return second.error();

    PagerdTimed out;
    out.side.daemon_args = spec.args;
    const auto ticks0 = thread_ticks(daemon->pid());
    const double cpu0 = process_cpu_seconds(daemon->pid());
    const double scpu0 = process_cpu_seconds(server.pid());
    libclient::MapOptions mo;
    mo.length = s.bytes;
    mo.access = libclient::Access::ReadOnly;
    mo.prefetch = spec.prefetch;
    Sampler sampler(std::move(second.value()));
    const auto t0 = Clock::now();
    auto region = spec.local ? conn.map_fd(s.fd, mo) : conn.map_store(server.uri(), mo);
    out.side.map_seconds = since(t0);
    if (!region) {
        sampler.stop();
        return Error{region.error().domain, region.error().code,
                     (spec.local ? std::string("map_fd: ") : "map_store(" + server.uri() + "): ") + region.error().message};
    }
    const Measure m = touch(region->addr, pages, spec.c.threads);
    sampler.stop();
    out.seconds = m.seconds + (spec.c.random ? 0 : out.side.map_seconds);
    out.checksum = m.checksum;
    const double cpu1 = process_cpu_seconds(daemon->pid());
    const double scpu1 = process_cpu_seconds(server.pid());
    const auto ticks1 = thread_ticks(daemon->pid());
    if (cpu0 >= 0 && cpu1 >= 0) out.side.daemon_cpu = cpu1 - cpu0;
    if (scpu0 >= 0 && scpu1 >= 0) out.side.server_cpu = scpu1 - scpu0;
    const long hz = ::sysconf(_SC_CLK_TCK);
    for (const auto& [tid, t] : ticks1) {
        const auto before = ticks0.find(tid);
        const double cpu = static_cast<double>(t.ticks - (before == ticks0.end() ? 0 : before->second.ticks)) /
                           static_cast<double>(hz > 0 ? hz : 100);
        if (cpu > out.side.busiest_cpu) {
            out.side.busiest_cpu = cpu;
            out.side.busiest = t.name;
        }
    }
    out.side.samples = sampler.samples;
    if (sampler.samples) out.side.inflight_mean = static_cast<double>(sampler.inflight_sum) / sampler.samples;
    out.side.inflight_max = sampler.inflight_max;
    out.side.connections_max = sampler.connections_max;
    std::string problem;
    if (spec.local) {
        // A file store keeps no read figures: nothing to show but the CPU.
    } else if (auto st = conn.stores()) {
        for (const auto& x : st.value())
            if (x.kind == "nbd") {
                out.side.store = x;
                out.side.have_store = true;
            }
        if (!out.side.have_store) problem = "the daemon lists no nbd store";
    } else {
        problem = "Connection::stores(): " + st.error().message;
    }
    if (auto regions = conn.regions()) {
        for (const auto& r : regions.value())
            if (r.id == region->id && r.pid == static_cast<std::uint32_t>(::getpid())) {
                out.side.have_region = true;
                out.side.faults = r.faults;
                out.side.p50_ns = r.latency_p50_ns;
                out.side.p99_ns = r.latency_p99_ns;
            }
    }
    const double wall = out.seconds;
    if (out.side.have_store && wall > 0)
        out.side.inflight_little = static_cast<double>(out.side.store.reads) *
                                   static_cast<double>(out.side.store.read_latency_avg_ns) / 1e9 / wall;
    const auto* mem = static_cast<const unsigned char*>(region->addr);
    const std::string bad = spec.c.random ? compare_pages(mem, true, s.fd, pages) : compare_all(mem, s.fd, s.bytes);
    auto unmapped = conn.unmap(region.value());
    if (!problem.empty()) return Error::system(EIO, problem);
    if (!bad.empty()) return Error::system(EBADMSG, "pagerd's bytes differ from the file: " + bad);
    if (!unmapped) return Error{unmapped.error().domain, unmapped.error().code, "unmap: " + unmapped.error().message};
    // Cold: a fresh daemon read every touched page from the export during this side.
    if (!spec.local && out.side.store.read_bytes < pages.size() * k_page)
        return Error::system(EIO, "not cold: the daemon read " + std::to_string(out.side.store.read_bytes) +
                                      " bytes from the export for " + std::to_string(pages.size() * k_page) + " touched");
    return out;
}

double median_of_runs(std::vector<double> v)
{
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

std::vector<Spec> specs(const NbdSetup& s)
{
    using libclient::Prefetch;
    std::vector<Spec> v;
    const std::uint64_t seq_pages = s.bytes / k_page;
    const std::string rt = std::to_string(s.random_threads) + "t";
    auto add = [&](std::string num, std::string name, std::string baseline, std::string title, bool target_case,
                   double target, bool random, unsigned threads, Prefetch p, std::vector<std::string> args) {
        Spec x;
        x.c.num = std::move(num);
        x.c.name = std::move(name);
        x.c.baseline = std::move(baseline);
        x.c.title = std::move(title);
        x.c.target_case = target_case;
        x.c.target = target;
        x.c.random = random;
        x.c.threads = threads;
        x.c.prefetch = libclient::prefetch_name(p);
        x.c.pages = random ? s.random.size() : seq_pages;
        x.c.id = x.c.num + ":" + x.c.name + "/" + x.c.baseline;
        x.prefetch = p;
        x.args = std::move(args);
        v.push_back(std::move(x));
    };
    add("1", "seq-1t", "nbdcopy", "sequential read of the whole export, 1 thread, pagerd's defaults", true, 0.8, false,
        1, Prefetch::Sequential, {});
    add("2", "rand-" + rt + "-none", "libnbd sync", "random 4 KiB reads, " + std::to_string(s.random_threads) +
                                                         " threads, policy none",
        true, 6.0, true, s.random_threads, Prefetch::None, {});
    add("x1", "rand-" + rt + "-seq", "libnbd sync",
        "random 4 KiB reads, " + std::to_string(s.random_threads) + " threads, the default policy (sequential)", false,
        -1, true, s.random_threads, Prefetch::Sequential, {});
    add("x2", "rand-1t-none", "libnbd sync", "random 4 KiB reads, 1 thread, policy none (the cost of a fault)", false,
        -1, true, 1, Prefetch::None, {});
    add("x3", "seq-1t-file", "nbdcopy",
        "sequential, 1 thread, pagerd's defaults, map_fd of the export's own file (page cache hot): the daemon's path "
        "without NBD",
        false, -1, false, 1, Prefetch::Sequential, {});
    v.back().local = true;
    int n = 0;
    for (const auto& args : s.sweep)
        add("s" + std::to_string(++n), "seq-1t", "nbdcopy", "sequential, 1 thread, pagerd " + joined(args), false, -1,
            false, 1, Prefetch::Sequential, args);
    return v;
}

}  // namespace

void nbd_emergency_cleanup() noexcept
{
    if (g_server_pid > 0) ::kill(g_server_pid, SIGTERM);
    if (g_copy[0]) ::unlink(g_copy);
    if (!g_server_dir[0]) return;
    char path[512];
    for (const char* f : k_server_files) {  // no allocation: a signal handler's
        const std::size_t d = std::strlen(g_server_dir), n = std::strlen(f);
        if (d + 1 + n >= sizeof path) continue;
        std::memcpy(path, g_server_dir, d);
        path[d] = '/';
        std::memcpy(path + d + 1, f, n + 1);
        ::unlink(path);
    }
    ::rmdir(g_server_dir);
}

Result<void> nbd_tools_present()
{
    if (on_path("nbdkit").empty())
        return Error::system(ENOENT, "--cases nbd needs nbdkit on $PATH (Debian: apt-get install nbdkit)");
    if (on_path("nbdcopy").empty())
        return Error::system(ENOENT, "--cases nbd needs nbdcopy on $PATH (Debian: apt-get install libnbd-bin)");
    return {};
}

NbdRun run_nbd_cases(const NbdSetup& s)
{
    NbdRun run;
    const auto start = Clock::now();
    run.load = slurp("/proc/loadavg");
    std::vector<Spec> all = specs(s);
    auto fail_all = [&](const std::string& why) {
        s.error("nbd cases: " + why);
        for (auto& x : all) {
            x.c.failure = why;
            run.cases.push_back(x.c);
        }
        run.seconds = since(start);
        return run;
    };
    NamedCopy copy;
    std::string file = s.path;
    if (file.empty()) {
        if (s.progress) std::fprintf(stderr, "nbd: copying the file to a named one for nbdkit...\n");
        if (auto c = copy_to_named(s.fd, s.bytes, s.tmpdir, copy); !c) return fail_all(c.error().message);
        file = copy.path;
        run.export_file = copy.path + " (a named copy of the temporary file, removed at the end)";
    } else {
        run.export_file = file;
    }
    auto started = Server::start(file, s.delay);
    if (!started) return fail_all(started.error().message);
    Server& server = *started.value();
    run.server = server.command();
    run.nbdcopy = "nbdcopy " + server.uri() + " null:";
    std::vector<std::vector<double>> depth_seconds(s.nbdcopy_depths.size()), depth_cpu(s.nbdcopy_depths.size()),
        depth_server(s.nbdcopy_depths.size());

    struct Samples {
        std::vector<double> base, base_cpu, base_server, pagerd;
        std::vector<std::pair<double, NbdSide>> sides;
    };
    std::vector<Samples> samples(all.size());
    const std::vector<std::uint32_t> seq = sequential_pages(s.bytes / k_page);
    for (unsigned rep = 0; rep < s.repeat; ++rep) {
        // The baselines, once per run: nbdcopy for the sequential rows, the synchronous
        // libnbd reader for the random ones. The file stays in the page cache (nbdkit reads it).
        if (s.progress) std::fprintf(stderr, "nbd: nbdcopy...\n");
        [[maybe_unused]] auto hot = make_hot(s.fd, s.bytes);
        Result<Timed> copy_t = run_nbdcopy(server, {});
        if (s.progress) std::fprintf(stderr, "nbd: libnbd synchronous reads...\n");
        Result<Timed> sync_t = run_libnbd_sync(server, s.fd, s.random, &run.libnbd);
        for (std::size_t k = 0; k < s.nbdcopy_depths.size(); ++k) {
            const auto [conns, requests] = s.nbdcopy_depths[k];
            if (s.progress) std::fprintf(stderr, "nbd: nbdcopy -C %u -R %u...\n", conns, requests);
            auto t = run_nbdcopy(server, {"--connections=" + std::to_string(conns), "--requests=" + std::to_string(requests)});
            if (!t) {
                s.error("nbd: nbdcopy -C " + std::to_string(conns) + " -R " + std::to_string(requests) + ": " +
                        t.error().message);
                continue;
            }
            depth_seconds[k].push_back(t->seconds);
            depth_cpu[k].push_back(t->cpu);
            depth_server[k].push_back(t->server_cpu);
        }
        for (std::size_t i = 0; i < all.size(); ++i) {
            Spec& x = all[i];
            if (!x.c.failure.empty()) continue;
            const Result<Timed>& b = x.c.random ? sync_t : copy_t;
            if (!b) {
                x.c.failure = "baseline " + x.c.baseline + ": " + b.error().message;
                s.error("nbd " + x.c.id + ": " + x.c.failure);
                continue;
            }
            if (const std::string gone = server.alive(); !gone.empty()) {
                x.c.failure = gone;
                s.error("nbd " + x.c.id + ": " + gone);
                continue;
            }
            if (s.progress) std::fprintf(stderr, "nbd [%zu/%zu] %s %s vs %s\n", i + 1, all.size(), x.c.num.c_str(),
                                         x.c.name.c_str(), x.c.baseline.c_str());
            [[maybe_unused]] auto h = make_hot(s.fd, s.bytes);
            auto p = run_pagerd(s, server, x, x.c.random ? s.random : seq);
            if (!p) {
                x.c.failure = "pagerd side: " + p.error().message;
                s.error("nbd " + x.c.id + ": " + x.c.failure);
                continue;
            }
            if (x.c.random && p->checksum != b->checksum) {
                x.c.failure = "the bytes touched through pagerd differ from those libnbd read (sum " +
                              std::to_string(p->checksum) + " instead of " + std::to_string(b->checksum) + ")";
                s.error("nbd " + x.c.id + ": " + x.c.failure);
                continue;
            }
            samples[i].base.push_back(b->seconds);
            samples[i].base_cpu.push_back(b->cpu);
            samples[i].base_server.push_back(b->server_cpu);
            samples[i].pagerd.push_back(p->seconds);
            samples[i].sides.emplace_back(p->seconds, p->side);
        }
    }
    for (std::size_t i = 0; i < all.size(); ++i) {
        NbdCase c = all[i].c;
        Samples& sm = samples[i];
        if (c.failure.empty() && sm.pagerd.size() == s.repeat) {
            c.base_seconds = median_of_runs(sm.base);
            c.base_cpu = median_of_runs(sm.base_cpu);
            c.base_server_cpu = median_of_runs(sm.base_server);
            c.pagerd_seconds = median_of_runs(sm.pagerd);
            std::sort(sm.sides.begin(), sm.sides.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            c.side = sm.sides[sm.sides.size() / 2].second;  // the median run's (the upper one of two)
        }
        c.side.daemon_args = all[i].args;
        run.cases.push_back(c);
    }
    for (std::size_t k = 0; k < s.nbdcopy_depths.size(); ++k) {
        NbdCopyRow r;
        r.connections = s.nbdcopy_depths[k].first;
        r.requests = s.nbdcopy_depths[k].second;
        r.pages = s.bytes / k_page;
        if (depth_seconds[k].size() == s.repeat) {
            r.seconds = median_of_runs(depth_seconds[k]);
            r.cpu = median_of_runs(depth_cpu[k]);
            r.server_cpu = median_of_runs(depth_server[k]);
        }
        run.copies.push_back(r);
    }
    run.seconds = since(start);
    return run;
}

}  // namespace pagerd::bench
