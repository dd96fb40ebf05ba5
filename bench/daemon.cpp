// A private pagerd for one benchmark run: found, started on a temporary socket, waited
// for, and stopped with SIGTERM at the end.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

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

// What daemon_emergency_cleanup() needs, set before the daemon is forked.
volatile sig_atomic_t g_pid = 0;
char g_socket[256];
char g_dir[256];

void copy_path(char (&to)[256], const std::string& from)
{
    const std::size_t n = std::min(from.size(), sizeof to - 1);
    std::memcpy(to, from.data(), n);
    to[n] = '\0';
}

std::string describe_status(int status)
{
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

}  // namespace

std::string find_pagerd()
{
    const std::string dir = self_dir();
    if (!dir.empty()) {
        if (executable(dir + "/../daemon/pagerd")) return canonical(dir + "/../daemon/pagerd");
        if (executable(dir + "/pagerd")) return canonical(dir + "/pagerd");
    }
    const char* path = std::getenv("PATH");
    std::string rest = path ? path : "";
    while (!rest.empty()) {
        const std::size_t colon = rest.find(':');
        const std::string d = rest.substr(0, colon);
        rest = colon == std::string::npos ? "" : rest.substr(colon + 1);
        if (!d.empty() && executable(d + "/pagerd")) return d + "/pagerd";
    }
    return {};
}

Result<std::unique_ptr<Daemon>> Daemon::start(const std::string& exe, const std::vector<std::string>& extra_args)
{
    std::unique_ptr<Daemon> d(new Daemon);
    d->m_exe = exe.empty() ? find_pagerd() : exe;
    if (d->m_exe.empty())
        return Error::system(ENOENT, "cannot find pagerd (not at ../daemon/pagerd next to pagerd-bench, nor "
                                     "next to it, nor on $PATH): give --pagerd PATH or --socket PATH");
    if (!executable(d->m_exe)) return Error::system(ENOENT, d->m_exe + " is not an executable file");
    std::string dir = "/tmp/pagerd-bench.XXXXXX";
    if (!::mkdtemp(dir.data())) return Error::system(errno, std::string("mkdtemp: ") + std::strerror(errno));
    d->m_dir = dir;
    d->m_socket = dir + "/pagerd.sock";

    std::vector<std::string> args = {d->m_exe, "--socket", d->m_socket, "--log-level", "warn"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) return Error::system(errno, std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
        // Die with the benchmark even if it is killed; keep stdout free for --json.
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(127);
        ::dup2(STDERR_FILENO, STDOUT_FILENO);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    d->m_pid = pid;
    copy_path(g_socket, d->m_socket);
    copy_path(g_dir, d->m_dir);
    g_pid = pid;
    return d;
}

std::string Daemon::exited()
{
    if (m_pid <= 0) return "not running";
    int status = 0;
    if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
        m_pid = -1;
        return describe_status(status);
    }
    return {};
}

void daemon_emergency_cleanup() noexcept
{
    if (g_pid > 0) ::kill(g_pid, SIGTERM);
    if (g_socket[0]) ::unlink(g_socket);
    if (g_dir[0]) ::rmdir(g_dir);
}

Daemon::~Daemon()
{
    g_pid = 0;
    g_socket[0] = g_dir[0] = '\0';
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
            std::fprintf(stderr, "pagerd-bench: pagerd did not stop within 5 s of SIGTERM; killed\n");
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::fprintf(stderr, "pagerd-bench: pagerd %s after SIGTERM\n", describe_status(status).c_str());
        }
    }
    if (!m_socket.empty()) ::unlink(m_socket.c_str());
    if (!m_dir.empty()) ::rmdir(m_dir.c_str());
}

double process_cpu_seconds(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) return -1;
    // The command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    const std::size_t close = line.rfind(')');
    if (close == std::string::npos) return -1;
    std::istringstream rest(line.substr(close + 1));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    if (!rest) return -1;
    const long hz = ::sysconf(_SC_CLK_TCK);
    return hz > 0 ? static_cast<double>(utime + stime) / static_cast<double>(hz) : -1;
}

long long process_vm_kib(pid_t pid, const char* field)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    const std::string want = std::string(field) + ":";
    for (std::string line; std::getline(in, line);)
        if (line.compare(0, want.size(), want) == 0) return std::atoll(line.c_str() + want.size());
    return -1;
}

Result<std::unique_ptr<libclient::Connection>> connect_with_retry(const std::string& socket,
                                                                  int wait_ms, Daemon* daemon)
{
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    for (;;) {
        auto conn = libclient::Connection::connect({socket, "pagerd-bench"});
        if (conn) return conn;
        if (daemon) {
            if (const std::string how = daemon->exited(); !how.empty())
                return Error::system(ECHILD, "pagerd (" + daemon->exe() + ") " + how + " before accepting a connection");
        }
        if (std::chrono::steady_clock::now() >= deadline)
            return daemon ? Error{conn.error().domain, conn.error().code, "pagerd did not accept a connection on " + socket +
                                                         " within " + std::to_string(wait_ms) + " ms: " +
                                                         conn.error().message}
                          : conn.error();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

}  // namespace pagerd::bench
