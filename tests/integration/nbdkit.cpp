#include "nbdkit.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <functional>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace pagerd::test {

std::vector<std::string> allow(const Nbdkit& s, std::vector<std::string> extra)
{
    extra.push_back("--allow-store=" + s.allow_prefix());
    return extra;
}

const char* transport_name(Nbdkit::Transport t) { return t == Nbdkit::Transport::Unix ? "unix" : "tcp"; }

int free_tcp_port()
{
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("no free TCP port");
    ::close(s);
    return ntohs(a.sin_port);
}

Nbdkit::Nbdkit(const std::string& plugin, const std::vector<std::string>& args, Transport transport,
               const std::vector<std::string>& filters, const std::vector<std::string>& server_args)
    : m_plugin(plugin), m_args(args), m_filters(filters), m_server_args(server_args), m_transport(transport)
{
    if (m_transport == Transport::Tcp) m_port = free_tcp_port();
    start();
}

Nbdkit::~Nbdkit() { kill_hard(); }

void Nbdkit::start()
{
    const std::string pidfile = m_dir.file("nbdkit.pid");
    ::unlink(pidfile.c_str());
    std::vector<std::string> argv{"/usr/bin/nbdkit", "--foreground", "--exit-with-parent", "-P", pidfile};
    if (m_transport == Transport::Unix) {
        argv.insert(argv.end(), {"-U", m_dir.file("nbd.sock")});
    } else {
        argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(m_port)});
    }
    argv.insert(argv.end(), m_server_args.begin(), m_server_args.end());
    for (const auto& f : m_filters) argv.push_back("--filter=" + f);
    argv.push_back(m_plugin);
    argv.insert(argv.end(), m_args.begin(), m_args.end());
    const std::string log = m_dir.file("nbdkit.log");
    // posix_spawn: a fork would give the daemon a child client of every region the test
    // maps (docs/fork.md) until the exec.
    m_pid = spawn(argv, {}, "/dev/null", log, log, true);  // a restart adds to the log
    // nbdkit writes its pid file once it accepts connections.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    struct stat st{};
    while (::stat(pidfile.c_str(), &st) != 0 || st.st_size == 0) {
        int status = 0;
        if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
            m_pid = -1;
            throw std::runtime_error("nbdkit exited at start: " + slurp(log));
        }
        if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("nbdkit did not start: " + slurp(log));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::string Nbdkit::uri(const std::string& export_name) const
{
    if (m_transport == Transport::Unix) return "nbd+unix:///" + export_name + "?socket=" + m_dir.file("nbd.sock");
    return "nbd://127.0.0.1:" + std::to_string(m_port) + "/" + export_name;
}

std::string Nbdkit::uri_with(const std::string& scheme, const std::string& user, const std::string& export_name,
                             const std::string& query) const
{
    if (m_transport == Transport::Unix)
        return scheme + "://" + user + "/" + export_name + "?socket=" + m_dir.file("nbd.sock") + query;
    return scheme + "://" + user + "127.0.0.1:" + std::to_string(m_port) + "/" + export_name + query;
}

bool Nbdkit::alive() const
{
    if (m_pid <= 0) return false;
    siginfo_t si{};  // ended (and left to reap by kill_hard()), or not
    return ::waitid(P_PID, static_cast<id_t>(m_pid), &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

std::string Nbdkit::log() const { return slurp(m_dir.file("nbdkit.log")); }

void Nbdkit::kill_hard()
{
    if (m_pid <= 0) return;
    ::kill(m_pid, SIGKILL);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
}

void Nbdkit::restart()
{
    kill_hard();
    if (m_transport == Transport::Unix) ::unlink(m_dir.file("nbd.sock").c_str());
    start();
}

// ---- bytes -------------------------------------------------------------------------------

std::uint64_t pattern_word(std::uint64_t w, std::uint32_t seed)
{
    std::uint64_t x = (w + 1) * 0x9E3779B97F4A7C15ull ^ (std::uint64_t{seed} << 32);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return x;
}

void make_pattern_file(const std::string& path, std::uint64_t size, std::uint32_t seed)
{
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    std::vector<std::uint64_t> buf(1 << 17);  // 1 MiB
    for (std::uint64_t at = 0; at < size;) {
        const std::uint64_t n = std::min<std::uint64_t>(size - at, buf.size() * 8);
        for (std::uint64_t i = 0; i < (n + 7) / 8; ++i) buf[i] = pattern_word(at / 8 + i, seed);
        REQUIRE(std::fwrite(buf.data(), 1, n, f) == n);
        at += n;
    }
    REQUIRE(std::fclose(f) == 0);
}

std::uint64_t pattern_mismatches(const void* p, std::uint64_t len, std::uint64_t base, std::uint32_t seed)
{
    const auto* b = static_cast<const std::uint8_t*>(p);
    std::uint64_t bad = 0, i = 0;
    for (; i < len && (base + i) % 8; ++i) bad += b[i] != pattern_byte(base + i, seed);
    for (; i + 8 <= len; i += 8) {
        std::uint64_t v;
        std::memcpy(&v, b + i, 8);
        const std::uint64_t want = pattern_word((base + i) / 8, seed);
        if (v != want)
            for (unsigned k = 0; k < 8; ++k) bad += ((v ^ want) >> (8 * k) & 0xff) != 0;
    }
    for (; i < len; ++i) bad += b[i] != pattern_byte(base + i, seed);
    return bad;
}

std::uint64_t nonzero_bytes(const void* p, std::uint64_t len)
{
    const auto* b = static_cast<const std::uint8_t*>(p);
    std::uint64_t bad = 0, i = 0;
    for (; i + 8 <= len; i += 8) {
        std::uint64_t v;
        std::memcpy(&v, b + i, 8);
        if (v)
            for (unsigned k = 0; k < 8; ++k) bad += (v >> (8 * k) & 0xff) != 0;
    }
    for (; i < len; ++i) bad += b[i] != 0;
    return bad;
}

// ---- SilentServer ------------------------------------------------------------------------

SilentServer::SilentServer() : m_path(m_dir.file("silent.sock"))
{
    m_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", m_path.c_str());
    if (m_fd < 0 || ::bind(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(m_fd, 64) != 0)
        throw std::runtime_error("silent server: " + std::string(std::strerror(errno)));
}

SilentServer::~SilentServer()
{
    if (m_fd >= 0) ::close(m_fd);  // the connections waiting in the backlog are reset
}

std::string SilentServer::uri(const std::string& export_name) const
{
    return "nbd+unix:///" + export_name + "?socket=" + m_path;
}

// ---- StoreClient -------------------------------------------------------------------------

namespace {

using libclient::Access;
using libclient::Prefetch;

sigjmp_buf g_scan_jump;
volatile sig_atomic_t g_scanning = 0;

void on_scan_sigbus(int)
{
    if (g_scanning) siglongjmp(g_scan_jump, 1);
    ::signal(SIGBUS, SIG_DFL);
    ::raise(SIGBUS);
}

struct ScanCounts {
    std::uint64_t right = 0, bus = 0, bad = 0;
};

// Checks [0, len) page by page with wrong(from, n), counting the pages whose touch raised
// SIGBUS. A function of its own, every local across sigsetjmp volatile: the caller's
// locals are not in reach of the longjmp (g++ -Wclobbered).
__attribute__((noinline)) ScanCounts scan_pages(const std::function<std::uint64_t(std::uint64_t, std::uint64_t)>& wrong,
                                                std::uint64_t len)
{
    const std::function<std::uint64_t(std::uint64_t, std::uint64_t)>* volatile fn = &wrong;
    volatile std::uint64_t right = 0, bus = 0, bad = 0, from = 0;
    const volatile std::uint64_t total = len;
    struct sigaction sa{}, old{};
    sa.sa_handler = on_scan_sigbus;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &old);
    while (from < total) {
        if (sigsetjmp(g_scan_jump, 1)) {
            g_scanning = 0;
            bus = bus + 1;
            continue;
        }
        const std::uint64_t here = from;
        from = here + 4096;
        g_scanning = 1;
        const std::uint64_t w = (*fn)(here, std::min<std::uint64_t>(4096, total - here));
        g_scanning = 0;
        if (w)
            bad = bad + 1;
        else
            right = right + 1;
    }
    ::sigaction(SIGBUS, &old, nullptr);
    return {right + 0, bus + 0, bad + 0};
}

bool write_line(int fd, std::string line)
{
    line.push_back('\n');
    const char* p = line.data();
    std::size_t left = line.size();
    while (left) {
        const ssize_t n = ::write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        left -= static_cast<std::size_t>(n);
    }
    return true;
}

// One line ("" at end of input); false when nothing came within the timeout (-1: none).
bool read_line(int fd, std::string& line, int timeout_ms = -1)
{
    line.clear();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        if (timeout_ms >= 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
            if (left <= 0) return false;
            pollfd p{fd, POLLIN, 0};
            const int n = ::poll(&p, 1, static_cast<int>(left));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
        }
        char c;
        const ssize_t n = ::read(fd, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || c == '\n') return true;
        line.push_back(c);
    }
}

std::string error_words(const Error& e)
{
    std::string code = e.domain == ErrorDomain::Daemon
                           ? libclient::daemon_error_name(static_cast<libclient::DaemonError>(e.code))
                           : e.domain == ErrorDomain::System ? "errno:" + std::to_string(e.code)
                                                             : "protocol:" + std::to_string(e.code);
    return "error " + code + " " + e.message;
}

struct ChildRegion {
    libclient::Region region;
    std::uint64_t offset = 0;
};

// The child's side: orders from `in`, answers to `out`.
int store_client_main(int in, int out)
{
    std::unique_ptr<libclient::Connection> conn;
    std::vector<ChildRegion> regions;
    for (;;) {
        std::string line;
        read_line(in, line);
        std::istringstream words(line);
        std::string verb;
        words >> verb;
        if (verb.empty() || verb == "exit") return 0;
        std::string answer;
        if (verb == "connect") {
            std::string socket;
            words >> socket;
            auto c = libclient::Connection::connect({socket, "store-client"});
            if (c) {
                conn = std::move(c.value());
                answer = "ok";
            } else {
                answer = "fail " + c.error().message;
            }
        } else if (verb == "map") {
            std::string uri, access, prefetch;
            libclient::MapOptions o;
            words >> uri >> o.offset >> o.length >> access >> prefetch;
            o.access = access == "sh" ? Access::Shared : access == "pw" ? Access::PrivateWritable : Access::ReadOnly;
            o.prefetch = prefetch == "all" ? Prefetch::All : prefetch == "none" ? Prefetch::None : Prefetch::Sequential;
            if (!conn) {
                answer = "error not-connected";
            } else if (auto r = conn->map_store(uri, o)) {
                regions.push_back({r.value(), o.offset});
                answer = "ok " + std::to_string(regions.size() - 1);
            } else {
                answer = error_words(r.error());
            }
        } else if (verb == "check" || verb == "scan" || verb == "write") {
            std::size_t i = 0;
            std::uint64_t off = 0, len = 0;
            std::string seed_word;
            words >> i >> off >> len >> seed_word;
            if (i >= regions.size() || off + len > regions[i].region.size) {
                answer = "error bad-order";
            } else {
                auto* base = static_cast<std::uint8_t*>(regions[i].region.addr) + off;
                const std::uint64_t at = regions[i].offset + off;
                const bool zero = seed_word == "z";
                const std::uint32_t seed = zero ? 0 : static_cast<std::uint32_t>(std::stoul(seed_word));
                auto wrong = [&](std::uint64_t from, std::uint64_t n) {
                    return zero ? nonzero_bytes(base + from, n) : pattern_mismatches(base + from, n, at + from, seed);
                };
                if (verb == "check") {
                    const std::uint64_t bad = wrong(0, len);
                    answer = bad ? "wrong " + std::to_string(bad) : "ok";
                } else if (verb == "write") {
                    std::uint64_t k = 0;
                    for (; k < len && (zero || (at + k) % 8); ++k) base[k] = zero ? 0 : pattern_byte(at + k, seed);
                    for (; k + 8 <= len; k += 8) {
                        const std::uint64_t v = pattern_word((at + k) / 8, seed);
                        std::memcpy(base + k, &v, 8);
                    }
                    for (; k < len; ++k) base[k] = pattern_byte(at + k, seed);
                    answer = "ok";
                } else {
                    const ScanCounts n = scan_pages(wrong, len);
                    answer = "ok " + std::to_string(n.right) + " " + std::to_string(n.bus) + " " + std::to_string(n.bad);
                }
            }
        } else if (verb == "flush" || verb == "unmap") {
            std::size_t i = 0;
            words >> i;
            if (i >= regions.size() || !conn) {
                answer = "error bad-order";
            } else if (verb == "flush") {
                auto f = conn->flush(regions[i].region);
                answer = f ? "ok " + std::to_string(f->pages) : error_words(f.error());
            } else {
                auto u = conn->unmap(regions[i].region);
                answer = u ? "ok" : error_words(u.error());
            }
        } else {
            answer = "error unknown-order";
        }
        if (!write_line(out, answer)) return 3;
    }
}

}  // namespace

StoreClient::StoreClient()
{
    int down[2], up[2];
    REQUIRE(::pipe2(down, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(up, O_CLOEXEC) == 0);
    m_pid = start_child([&] {
        // Only our own two ends: a sibling's pipes held here would hide its end from the
        // parent.
        for (int fd = 3; fd < 4096; ++fd)
            if (fd != down[0] && fd != up[1]) ::close(fd);
        return store_client_main(down[0], up[1]);
    });
    ::close(down[0]);
    ::close(up[1]);
    m_down = down[1];
    m_up = up[0];
}

StoreClient::~StoreClient()
{
    if (!m_waited) {
        send("exit");
        (void)wait(std::chrono::seconds(20));
    }
    ::close(m_down);
    ::close(m_up);
}

std::string StoreClient::ask(const std::string& order, std::chrono::milliseconds timeout)
{
    if (!send(order)) return "";
    return answer(timeout);
}

bool StoreClient::send(const std::string& order)
{
    if (m_waited) return false;
    // A child that died (SIGBUS, on purpose) leaves a pipe whose write raises SIGPIPE:
    // blocked for this write, and a SIGPIPE it raised taken back, so that it never reaches
    // the test process nor what the test starts later.
    sigset_t pipe_only, old;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    const bool was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
    const bool ok = write_line(m_down, order);
    if (!ok && !was_pending) {
        const timespec zero{0, 0};
        while (sigtimedwait(&pipe_only, nullptr, &zero) == -1 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return ok;
}

std::string StoreClient::answer(std::chrono::milliseconds timeout)
{
    if (m_waited) return "";
    std::string line;
    if (!read_line(m_up, line, static_cast<int>(timeout.count()))) return "timeout";
    return line;
}

int StoreClient::wait(std::chrono::milliseconds timeout)
{
    if (m_waited) return m_status;
    m_waited = true;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        int st = 0;
        if (::waitpid(m_pid, &st, WNOHANG) == m_pid) return m_status = st;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(m_pid, SIGKILL);
            ::waitpid(m_pid, &st, 0);
            return m_status = st;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
}

std::string describe_status(int status)
{
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + ::strsignal(WTERMSIG(status)) + ")";
    return "wait status " + std::to_string(status);
}

}  // namespace pagerd::test
