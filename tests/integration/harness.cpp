#include "harness.hpp"

#include <catch2/catch.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace pagerd::test {
namespace {

using namespace std::chrono_literals;

int wait_with_timeout(pid_t pid, std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            FAIL("child process " << pid << " did not finish within " << timeout.count() << " ms");
        }
        std::this_thread::sleep_for(2ms);
    }
}

void remove_tree(const std::string& path)
{
    if (DIR* d = ::opendir(path.c_str())) {
        while (dirent* e = ::readdir(d)) {
            if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
            const std::string p = path + "/" + e->d_name;
            struct stat st{};
            if (::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
                remove_tree(p);
            else
                ::unlink(p.c_str());
        }
        ::closedir(d);
    }
    ::rmdir(path.c_str());
}

}  // namespace

TempDir::TempDir()
{
    char tmpl[] = "/tmp/pagerd-test-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    m_path = tmpl;
}

TempDir::~TempDir() { remove_tree(m_path); }

std::uint8_t pattern_byte(std::uint64_t i, std::uint32_t seed)
{
    std::uint64_t x = (i / 8 + 1) * 0x9E3779B97F4A7C15ull ^ (std::uint64_t{seed} << 32);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return static_cast<std::uint8_t>(x >> (8 * (i % 8)));
}

void make_file(const std::string& path, std::uint64_t size, std::uint32_t seed)
{
    std::vector<std::uint8_t> buf(size);
    for (std::uint64_t i = 0; i < size; ++i) buf[i] = pattern_byte(i, seed);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(size));
    REQUIRE(out.good());
}

std::vector<std::uint8_t> read_file(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

Daemon::Daemon(std::vector<std::string> extra_args) : m_socket(m_dir.file("pagerd.sock"))
{
    std::vector<std::string> args{PAGERD_BINARY, "--socket", m_socket, "--log-level", "debug"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    const std::string log = m_dir.file("pagerd.log");
    m_pid = spawn(args, {}, "/dev/null", log, log);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
        auto c = libclient::Connection::connect({m_socket, "probe", 0, 1000});
        if (c && c.value()->ping()) return;
        if (!alive()) FAIL("pagerd exited at start:\n" << this->log());
        std::this_thread::sleep_for(10ms);
    }
    FAIL("pagerd did not answer within 10 s:\n" << this->log());
}

Daemon::~Daemon()
{
    // Every test ends with a clean stop: SIGTERM, exit status 0 (under ASan that also
    // means LeakSanitizer found nothing).
    if (m_pid > 0 && alive()) {
        const int st = stop();
        INFO("pagerd log:\n" << log());
        CHECK(exited_with(st, 0));
    } else if (m_pid > 0) {
        ::waitpid(m_pid, nullptr, 0);
    }
}

bool Daemon::alive() const
{
    if (m_pid <= 0) return false;
    int status;
    return ::waitpid(m_pid, &status, WNOHANG) == 0;
}

int Daemon::stop()
{
    ::kill(m_pid, SIGTERM);
    const int status = wait_with_timeout(m_pid, 15s);
    m_pid = -1;
    return status;
}

void Daemon::kill_hard()
{
    ::kill(m_pid, SIGKILL);
    ::waitpid(m_pid, nullptr, 0);
    m_pid = -1;
}

std::string Daemon::log() const { return slurp(m_dir.file("pagerd.log")); }

std::unique_ptr<libclient::Connection> Daemon::connect(const std::string& name) const
{
    auto c = libclient::Connection::connect({m_socket, name});
    if (!c) FAIL("connect: " << c.error().message);
    return std::move(c.value());
}

libclient::Status Daemon::status() const
{
    auto c = connect("status");
    auto s = c->status();
    if (!s) FAIL("status: " << s.error().message);
    return s.value();
}

std::size_t Daemon::fd_count() const
{
    std::size_t n = 0;
    if (DIR* d = ::opendir(("/proc/" + std::to_string(m_pid) + "/fd").c_str())) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
    }
    return n;
}

bool Daemon::wait_until(const std::function<bool(const libclient::Status&)>& pred,
                        std::chrono::milliseconds timeout) const
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
        if (pred(status())) return true;
        std::this_thread::sleep_for(20ms);
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
}

bool Daemon::wait_log(const std::string& text, std::chrono::milliseconds timeout) const
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
        if (log().find(text) != std::string::npos) return true;
        std::this_thread::sleep_for(20ms);
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
}

bool Daemon::wait_fds_at_most(std::size_t fds, std::chrono::milliseconds timeout) const
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
        if (fd_count() <= fds) return true;
        std::this_thread::sleep_for(20ms);
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
}

pid_t start_child(const std::function<int()>& fn)
{
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        reset_fatal_signals();
        int rc = 99;
        try {
            rc = fn();
        } catch (...) {
            rc = 98;
        }
        _exit(rc);
    }
    return pid;
}

int wait_child(pid_t pid, std::chrono::milliseconds timeout) { return wait_with_timeout(pid, timeout); }

int run_child(const std::function<int()>& fn, std::chrono::milliseconds timeout)
{
    return wait_child(start_child(fn), timeout);
}

TracedRun run_traced_child(const std::function<int()>& fn, std::chrono::milliseconds timeout)
{
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        reset_fatal_signals();
        ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
        ::raise(SIGSTOP);  // wait until the parent traces us
        int rc = 99;
        try {
            rc = fn();
        } catch (...) {
            rc = 98;
        }
        _exit(rc);
    }
    TracedRun run;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        int st = 0;
        const pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, &st, 0);
                FAIL("traced child did not finish in time");
            }
            std::this_thread::sleep_for(1ms);
            continue;
        }
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            run.status = st;
            return run;
        }
        int pass = 0;
        if (WIFSTOPPED(st) && WSTOPSIG(st) != SIGSTOP) {
            siginfo_t si{};
            ::ptrace(PTRACE_GETSIGINFO, pid, nullptr, &si);
            run.signals.push_back(si);
            pass = WSTOPSIG(st);
        }
        ::ptrace(PTRACE_CONT, pid, nullptr, reinterpret_cast<void*>(static_cast<long>(pass)));
    }
}

// posix_spawn, not fork + exec: glibc's shares the address space until the exec
// (CLONE_VFORK), so the regions of a test that holds some are never forked (a fork would
// give the daemon a child client until the exec, docs/fork.md).
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& in,
            const std::string& out, const std::string& err, bool append)
{
    // Not O_APPEND unless asked: a program may pwrite its stdout (nbdcopy does).
    const int mode = O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, in.c_str(), O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), mode, 0644);
    if (err == out)
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
    else
        posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), mode, 0644);
    // The environment, with env's NAME=VALUE entries replacing or adding.
    std::vector<std::string> vars;
    for (char** e = environ; *e; ++e) {
        const std::string kv = *e;
        const auto name = kv.substr(0, kv.find('=') + 1);
        bool replaced = false;
        for (const auto& o : env) replaced = replaced || o.rfind(name, 0) == 0;
        if (!replaced) vars.push_back(kv);
    }
    vars.insert(vars.end(), env.begin(), env.end());
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (auto& v : vars) envp.push_back(v.data());
    envp.push_back(nullptr);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) FAIL("cannot start " << argv[0] << ": " << std::strerror(rc));
    return pid;
}

CommandResult run_command(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          std::chrono::milliseconds timeout)
{
    TempDir dir;
    const std::string out = dir.file("out"), err = dir.file("err");
    const pid_t pid = spawn(argv, env, "/dev/null", out, err);
    CommandResult r;
    r.status = wait_with_timeout(pid, timeout);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

std::string slurp(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::unique_ptr<libclient::Connection> connect_within(const std::string& socket, std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto c = libclient::Connection::connect({socket});
        if (c) return std::move(c.value());
        if (std::chrono::steady_clock::now() > deadline) return nullptr;
        std::this_thread::sleep_for(10ms);
    }
}

void reset_fatal_signals()
{
    for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE}) ::signal(sig, SIG_DFL);
}

std::uint64_t proc_status_bytes(pid_t pid, const std::string& field)
{
    std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1)) * 1024;  // "kB"
    return 0;
}

bool exited_with(int status, int code) { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
bool killed_by(int status, int signo) { return WIFSIGNALED(status) && WTERMSIG(status) == signo; }

}  // namespace pagerd::test
