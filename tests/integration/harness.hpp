// Test harness: the real pagerd binary on a temporary socket, real files, child processes.
#pragma once
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pagerd/client.hpp"

namespace pagerd::test {

// A fresh directory under /tmp, removed with its contents at the end.
class TempDir {
public:
    TempDir();
    ~TempDir();
    const std::string& path() const { return m_path; }
    std::string file(const std::string& name) const { return m_path + "/" + name; }

private:
    std::string m_path;
};

// Deterministic, position-dependent content: byte i of a file made with `seed`.
std::uint8_t pattern_byte(std::uint64_t i, std::uint32_t seed);
void make_file(const std::string& path, std::uint64_t size, std::uint32_t seed = 1);
std::vector<std::uint8_t> read_file(const std::string& path);

// The real daemon, started with `--socket DIR/pagerd.sock` plus extra arguments, logging
// to DIR/pagerd.log. Waits until a client can connect and ping.
class Daemon {
public:
    explicit Daemon(std::vector<std::string> extra_args = {});
    ~Daemon();
    const std::string& socket() const { return m_socket; }
    pid_t pid() const { return m_pid; }
    bool alive() const;
    int stop();        // SIGTERM, wait; returns the wait status
    void kill_hard();  // SIGKILL, wait
    std::string log() const;
    std::unique_ptr<libclient::Connection> connect(const std::string& name = "test") const;
    libclient::Status status() const;
    std::size_t fd_count() const;  // descriptors the daemon holds now
    // Polls until the daemon's status satisfies pred, or the timeout passes.
    bool wait_until(const std::function<bool(const libclient::Status&)>& pred,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
    // Polls until the daemon's log contains `text` (write-backs run in the background and
    // say when they are done).
    bool wait_log(const std::string& text, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
    // Polls until the daemon holds at most `fds` descriptors.
    bool wait_fds_at_most(std::size_t fds, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

private:
    TempDir m_dir;
    std::string m_socket;
    pid_t m_pid = -1;
};

// Runs fn in a forked child; returns the raw wait status. The child exits with fn's
// return value. Kills the child and fails the test if it runs longer than `timeout`.
// A child that connects (libclient starts a monitor thread per connection) must be forked
// while this process runs no thread of its own, no connection open: ThreadSanitizer kills
// a child that starts a thread after a fork of a multi-threaded process. Otherwise run a
// program (run_command, PAGERD_TEST_CHILD: tests/helpers/test_child.cpp).
int run_child(const std::function<int()>& fn, std::chrono::milliseconds timeout = std::chrono::seconds(30));
// run_child in two steps, for a parent that acts while the child runs: start_child forks
// (before the parent starts any thread, as above) and returns the pid; wait_child waits
// for it as run_child does and returns the raw wait status.
pid_t start_child(const std::function<int()>& fn);
int wait_child(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Runs fn in a forked child under ptrace, to see the signals the kernel delivers to it
// (si_code, si_addr) and how it ends. Each signal is passed on to the child unchanged.
struct TracedRun {
    int status = -1;                        // raw wait status at the end
    std::vector<siginfo_t> signals;         // every signal delivered to the child, in order
};
TracedRun run_traced_child(const std::function<int()>& fn,
                           std::chrono::milliseconds timeout = std::chrono::seconds(30));

struct CommandResult {
    int status = -1;  // raw wait status
    std::string out;
    std::string err;
};
// Starts argv[0] (an absolute path) with posix_spawn: stdin from `in`, stdout to `out`,
// stderr to `err` (may equal out; both truncated, or appended to with `append`), the
// environment with `env`'s NAME=VALUE entries.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& in,
            const std::string& out, const std::string& err, bool append = false);
CommandResult run_command(const std::vector<std::string>& argv,
                          const std::vector<std::string>& env = {},
                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

// In a forked child: default actions for the fatal signals that Catch2 intercepts, so
// that the child dies by the signal itself as it would outside the test runner.
void reset_fatal_signals();

// A file's whole contents ("" if it cannot be read).
std::string slurp(const std::string& path);

// Connects to the daemon at `socket`, retrying until it answers or the timeout passes.
std::unique_ptr<libclient::Connection> connect_within(const std::string& socket,
                                                      std::chrono::milliseconds timeout = std::chrono::seconds(5));

// A "Name:   N kB" field of /proc/<pid>/status (VmRSS, VmHWM, ...), in bytes; 0 if absent.
std::uint64_t proc_status_bytes(pid_t pid, const std::string& field);

bool exited_with(int status, int code);
bool killed_by(int status, int signo);

}  // namespace pagerd::test
