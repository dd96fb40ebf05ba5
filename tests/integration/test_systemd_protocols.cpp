// pagerd as systemd sees it, through the documented protocols: socket activation
// (LISTEN_FDS, via the real systemd-socket-activate), readiness, status, watchdog and
// stopping (NOTIFY_SOCKET), and reload on SIGHUP.
#include <catch2/catch.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include "harness.hpp"
#include "pagerd/util/unique_fd.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;

namespace {

// The receiving end of NOTIFY_SOCKET, as systemd has it: a thread reads every datagram as
// it comes, as systemd does (a daemon that keeps clients in the descriptor store sends a
// few per client; unread, they would fill the socket's queue, net.unix.max_dgram_qlen,
// and the daemon would wait for room).
class NotifySocket {
public:
    explicit NotifySocket(const std::string& path) : m_path(path)
    {
        m_fd.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, path.c_str());
        REQUIRE(::bind(m_fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::pipe2(m_stop, O_CLOEXEC) == 0);
        m_reader = std::thread([this] { read_all(); });
    }
    ~NotifySocket()
    {
        (void)!::write(m_stop[1], "x", 1);
        m_reader.join();
        ::close(m_stop[0]);
        ::close(m_stop[1]);
    }
    NotifySocket(const NotifySocket&) = delete;
    NotifySocket& operator=(const NotifySocket&) = delete;
    // Next datagram within timeout, or "" when none came.
    std::string next(std::chrono::milliseconds timeout)
    {
        std::unique_lock lock(m_mutex);
        if (!m_ready.wait_for(lock, timeout, [this] { return !m_queue.empty(); })) return "";
        std::string m = std::move(m_queue.front());
        m_queue.pop_front();
        return m;
    }
    // Waits for a datagram containing `what`; returns it, or "" at the deadline.
    std::string wait_for(const std::string& what, std::chrono::milliseconds timeout)
    {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            auto m = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
            if (m.find(what) != std::string::npos) return m;
        }
        return "";
    }
    int count(const std::string& what, std::chrono::milliseconds during)
    {
        int n = 0;
        const auto deadline = std::chrono::steady_clock::now() + during;
        while (std::chrono::steady_clock::now() < deadline) {
            auto m = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
            if (m.find(what) != std::string::npos) ++n;
        }
        return n;
    }
    const std::string& path() const { return m_path; }

private:
    void read_all()
    {
        for (;;) {
            pollfd p[2] = {{m_fd.get(), POLLIN, 0}, {m_stop[0], POLLIN, 0}};
            if (::poll(p, 2, -1) < 0 || p[1].revents) return;
            char buf[4096];
            const ssize_t n = ::recv(m_fd.get(), buf, sizeof buf, MSG_DONTWAIT);  // descriptors: closed
            if (n <= 0) continue;
            std::lock_guard lock(m_mutex);
            m_queue.emplace_back(buf, static_cast<std::size_t>(n));
            m_ready.notify_all();
        }
    }
    std::string m_path;
    util::UniqueFd m_fd;
    int m_stop[2] = {-1, -1};
    std::mutex m_mutex;
    std::condition_variable m_ready;
    std::deque<std::string> m_queue;
    std::thread m_reader;
};

// Everything the child needs is made before fork: the test runs a thread (NotifySocket),
// and a child of a multi-threaded process may only make async-signal-safe calls.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& log)
{
    std::vector<std::string> envs(env);
    for (char** e = environ; *e; ++e) envs.emplace_back(*e);  // first match wins in getenv
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& kv : envs) envp.push_back(const_cast<char*>(kv.c_str()));
    envp.push_back(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::execvpe(args[0], args.data(), envp.data());
        _exit(127);
    }
    return pid;
}

pid_t thread_named(pid_t pid, const std::string& name)
{
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return -1;
    pid_t found = -1;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::string comm = slurp(dir + "/" + e->d_name + "/comm");
        if (comm.rfind(name, 0) == 0) found = std::atoi(e->d_name);
    }
    ::closedir(d);
    return found;
}

int wait_exit(pid_t pid, std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int st = 0;
    while (::waitpid(pid, &st, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            FAIL("process did not exit in time");
        }
        std::this_thread::sleep_for(5ms);
    }
    return st;
}

}  // namespace

TEST_CASE("readiness, live status, watchdog from the serving path, stopping", "[systemd][notify]")
{
    TempDir dir;
    NotifySocket notify(dir.file("notify"));
    const std::string sock = dir.file("pagerd.sock");
    const pid_t pid = spawn({PAGERD_BINARY, "--socket", sock, "--workers", "2"},
                            {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=400000"}, dir.file("log"));
    INFO(slurp(dir.file("log")));
    REQUIRE_FALSE(notify.wait_for("READY=1", 10s).empty());
    auto conn = libclient::Connection::connect({sock});
    REQUIRE(conn.ok());
    CHECK_THAT(notify.wait_for("STATUS=serving 1 client(s)", 5s), Catch::Contains("region(s)"));
    CHECK(notify.count("WATCHDOG=1", 1500ms) >= 3);  // every 100 ms with a 400 ms watchdog

    // A stuck worker: stop just one worker thread (ptrace), and the pings must stop.
    const pid_t worker = thread_named(pid, "pagerd-w1");
    REQUIRE(worker > 0);
    REQUIRE(::ptrace(PTRACE_SEIZE, worker, nullptr, nullptr) == 0);
    REQUIRE(::ptrace(PTRACE_INTERRUPT, worker, nullptr, nullptr) == 0);
    (void)notify.count("WATCHDOG=1", 500ms);         // pings already on their way
    CHECK(notify.count("WATCHDOG=1", 1500ms) == 0);  // none while the worker is stuck
    int st;
    ::waitpid(worker, &st, __WALL);
    REQUIRE(::ptrace(PTRACE_DETACH, worker, nullptr, nullptr) == 0);
    CHECK(notify.count("WATCHDOG=1", 1500ms) >= 2);  // and back once it turns again
    CHECK_THAT(slurp(dir.file("log")), Catch::Contains("withholding watchdog pings"));

    conn.value().reset();
    ::kill(pid, SIGTERM);
    CHECK_FALSE(notify.wait_for("STOPPING=1", 5s).empty());
    CHECK(exited_with(wait_exit(pid, 15s), 0));
}

TEST_CASE("socket activation through the real systemd-socket-activate", "[systemd][activation]")
{
    TempDir dir;
    make_file(dir.file("data"), 300000, 301);
    const auto data = read_file(dir.file("data"));
    const std::string sock = dir.file("activated.sock");
    NotifySocket notify(dir.file("notify"));
    // systemd-socket-activate listens, and starts pagerd at the first connection with the
    // listening socket passed as LISTEN_FDS. --socket points elsewhere: it must be ignored.
    const pid_t pid = spawn({"systemd-socket-activate", "--seqpacket", "-l", sock, "--fdname=pagerd",
                             "-E", "NOTIFY_SOCKET=" + notify.path(), PAGERD_BINARY, "--socket",
                             dir.file("unused.sock")},
                            {}, dir.file("log"));
    // The path appears at bind(), a moment before listen(): retry a refused connect.
    auto conn = connect_within(sock, 5s);
    INFO(slurp(dir.file("log")));
    REQUIRE(conn);
    auto r = conn->map_file(dir.file("data"), {0, 303104, libclient::Access::ReadOnly});
    REQUIRE(r.ok());
    CHECK(std::memcmp(r->addr, data.data(), data.size()) == 0);
    CHECK_FALSE(notify.wait_for("READY=1", 5s).empty());
    CHECK_THAT(slurp(dir.file("log")), Catch::Contains("using the socket passed by systemd (pagerd)"));
    CHECK(::access(dir.file("unused.sock").c_str(), F_OK) != 0);
    REQUIRE(conn->unmap(r.value()).ok());
    conn.reset();
    ::kill(pid, SIGTERM);
    CHECK(exited_with(wait_exit(pid, 15s), 0));
}

TEST_CASE("SIGHUP re-reads the config file: new limits apply, a bad file changes nothing", "[systemd][reload]")
{
    TempDir dir;
    make_file(dir.file("data"), 1 << 20, 302);
    const std::string sock = dir.file("pagerd.sock");
    auto write_config = [&](const std::string& body) { std::ofstream(dir.file("pagerd.conf")) << body; };
    write_config("socket = \"" + sock + "\"\nmax-regions-per-client = 2\n");
    NotifySocket notify(dir.file("notify"));
    const pid_t pid = spawn({PAGERD_BINARY, "--config", dir.file("pagerd.conf")}, {"NOTIFY_SOCKET=" + notify.path()},
                            dir.file("log"));
    REQUIRE_FALSE(notify.wait_for("READY=1", 10s).empty());
    auto conn = libclient::Connection::connect({sock});
    REQUIRE(conn.ok());
    auto map = [&](std::uint64_t i) { return conn.value()->map_file(dir.file("data"), {i * 65536, 65536, libclient::Access::ReadOnly}); };
    REQUIRE(map(0).ok());
    REQUIRE(map(1).ok());
    auto third = map(2);
    REQUIRE_FALSE(third.ok());
    CHECK_THAT(third.error().message, Catch::Contains("at most 2 regions"));

    write_config("socket = \"" + sock + "\"\nmax-regions-per-client = 5\n");
    ::kill(pid, SIGHUP);
    CHECK_FALSE(notify.wait_for("RELOADING=1", 5s).empty());
    CHECK_FALSE(notify.wait_for("READY=1", 5s).empty());
    CHECK(map(2).ok());  // the connection stays; the new limit applies to it

    write_config("max-regions-per-client = many\n");
    ::kill(pid, SIGHUP);
    CHECK_FALSE(notify.wait_for("READY=1", 5s).empty());
    CHECK(map(3).ok());  // still 5
    CHECK(conn.value()->ping().ok());
    INFO(slurp(dir.file("log")));
    CHECK_THAT(slurp(dir.file("log")), Catch::Contains("keeping the current one"));
    conn.value().reset();
    ::kill(pid, SIGTERM);
    CHECK(exited_with(wait_exit(pid, 15s), 0));
}
