// Restart without losing a fault: the test plays systemd's part through the documented
// protocols (NOTIFY_SOCKET with FDSTORE=1 / FDSTOREREMOVE=1, then LISTEN_FDS /
// LISTEN_FDNAMES / LISTEN_PID for the next daemon).
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "harness.hpp"
#include "nbdkit.hpp"
#include "pagerd/util/unique_fd.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Tracking;

// fcntl(a, F_DUPFD_QUERY, b): 1 when a and b are the same open file (Linux 6.10; older
// headers lack the name).
constexpr int k_dupfd_query = 1027;

namespace {

// systemd's end of NOTIFY_SOCKET, with its descriptor store.
class ServiceManager {
public:
    explicit ServiceManager(const std::string& path) : m_path(path)
    {
        m_fd.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, path.c_str());
        REQUIRE(::bind(m_fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    const std::string& path() const { return m_path; }
    // Takes every pending message; true when one contained `what`.
    bool pump(const std::string& what = "", std::chrono::milliseconds timeout = 0ms)
    {
        bool seen = false;
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            pollfd p{m_fd.get(), POLLIN, 0};
            if (::poll(&p, 1, seen || left.count() <= 0 ? 0 : static_cast<int>(left.count())) != 1) return seen;
            char buf[4096];
            iovec iov{buf, sizeof buf};
            alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
            msghdr mh{};
            mh.msg_iov = &iov;
            mh.msg_iovlen = 1;
            mh.msg_control = control;
            mh.msg_controllen = sizeof control;
            const ssize_t n = ::recvmsg(m_fd.get(), &mh, MSG_CMSG_CLOEXEC);
            if (n <= 0) return seen;
            std::vector<int> fds;
            for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                    for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
                        int fd;
                        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                        fds.push_back(fd);
                    }
            const std::string msg(buf, static_cast<std::size_t>(n));
            const auto name_at = msg.find("FDNAME=");
            const std::string name = name_at == std::string::npos ? "" : msg.substr(name_at + 7, msg.find('\n', name_at) - name_at - 7);
            if (msg.find("FDSTORE=1") != std::string::npos && !fds.empty() && stored_already(fds[0])) {
                // systemd keeps one copy of a descriptor (same open file, F_DUPFD_QUERY /
                // kcmp) and drops a second, whatever its name ("Suppressing duplicate fd").
                for (int fd : fds) ::close(fd);
            } else if (msg.find("FDSTORE=1") != std::string::npos && !fds.empty()) {
                m_store[name] = util::UniqueFd(fds[0]);
                for (std::size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
            } else {
                for (int fd : fds) ::close(fd);
                if (msg.find("FDSTOREREMOVE=1") != std::string::npos) m_store.erase(name);
            }
            if (!what.empty() && msg.find(what) != std::string::npos) seen = true;
        }
    }
    std::size_t stored() const { return m_store.size(); }
    bool stored_already(int fd) const
    {
        for (const auto& [name, have] : m_store)
            if (::fcntl(fd, k_dupfd_query, have.get()) == 1) return true;
        return false;
    }
    void drop_store() { m_store.clear(); }
    // Loses the entries whose names end with `suffix` (as a store without room would).
    void erase_suffix(const std::string& suffix)
    {
        std::erase_if(m_store, [&](const auto& e) {
            return e.first.size() >= suffix.size() && e.first.compare(e.first.size() - suffix.size(), suffix.size(), suffix) == 0;
        });
    }
    std::size_t stored_with_suffix(const std::string& s) const
    {
        std::size_t n = 0;
        for (const auto& [name, fd] : m_store) n += name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
        return n;
    }
    std::size_t stored_with_prefix(const std::string& p) const
    {
        std::size_t n = 0;
        for (const auto& [name, fd] : m_store) n += name.rfind(p, 0) == 0;
        return n;
    }
    // Starts pagerd with the stored descriptors, as systemd starts a service.
    pid_t start(const std::vector<std::string>& args, const std::string& log)
    {
        std::vector<std::pair<std::string, int>> fds;
        for (const auto& [name, fd] : m_store) fds.emplace_back(name, fd.get());
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            const int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            ::dup2(logfd, 1);
            ::dup2(logfd, 2);
            // dup everything high first, then into place at 3, 4, ...
            std::vector<int> high;
            for (const auto& [name, fd] : fds) high.push_back(::fcntl(fd, F_DUPFD, 1000));
            std::string names;
            for (std::size_t i = 0; i < high.size(); ++i) {
                ::dup2(high[i], 3 + static_cast<int>(i));
                names += (i ? ":" : "") + fds[i].first;
            }
            for (int fd : high) ::close(fd);  // the daemon gets each once, as from systemd
            ::setenv("NOTIFY_SOCKET", m_path.c_str(), 1);
            if (!fds.empty()) {
                ::setenv("LISTEN_FDS", std::to_string(fds.size()).c_str(), 1);
                ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
                ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
            }
            std::vector<char*> argv{const_cast<char*>(PAGERD_BINARY)};
            for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            _exit(127);
        }
        return pid;
    }

private:
    std::string m_path;
    util::UniqueFd m_fd;
    std::map<std::string, util::UniqueFd> m_store;
};

// Waits for a process (the daemon, or a client it serves) to exit while reading what the
// daemon sends to NOTIFY_SOCKET: a stopping daemon sends many messages (FDSTORE=1,
// FDSTOREREMOVE=1, STOPPING=1) and blocks in sendmsg once the socket's queue is full, as it
// would if systemd stopped reading. Kills the process and fails with `late` after `timeout`.
int wait_exit_pumping(pid_t pid, ServiceManager& sm, std::chrono::seconds timeout, const char* late)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int st = 0;
    while (::waitpid(pid, &st, WNOHANG) == 0) {
        sm.pump();
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            FAIL(late);
        }
        std::this_thread::sleep_for(5ms);
    }
    sm.pump();
    return st;
}

int wait_daemon(pid_t pid, ServiceManager& sm) { return wait_exit_pumping(pid, sm, 30s, "the daemon did not exit in time"); }

// One byte from fd, pumping NOTIFY_SOCKET meanwhile; -1 if none came in time (or EOF).
int read_byte(int fd, ServiceManager& sm, std::chrono::seconds timeout = 60s)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        sm.pump();
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 5) == 1) {
            unsigned char b;
            return ::read(fd, &b, 1) == 1 ? b : -1;
        }
    }
    return -1;
}

// Reads one progress byte from a client, pumping NOTIFY_SOCKET meanwhile (the daemon serving
// the client must never block on it); false if none came in time.
bool read_stage(int fd, ServiceManager& sm, std::chrono::seconds timeout = 60s)
{
    return read_byte(fd, sm, timeout) >= 0;
}

// A client process that keeps faulting through a restart and writes to a Shared region.
// Reports progress through `progress` (one byte per stage) and exits 0 when every byte it
// read was right and its writes are in the file.
int restart_client(const std::string& sock, const std::string& data, const std::string& shared, int progress)
{
    auto c = libclient::Connection::connect({sock, "survivor"});
    if (!c) return 3;
    const std::uint64_t size = 128ull << 20;
    auto r = c.value()->map_file(data, {0, size, Access::ReadOnly});
    auto w = c.value()->map_file(shared, {0, 1 << 20, Access::Shared, Tracking::UffdWp});
    if (!r || !w) return 4;
    auto* wp = static_cast<std::uint8_t*>(w->addr);
    std::memset(wp, 0x5A, 8192);  // dirty before the restart
    (void)!::write(progress, "a", 1);
    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
    bool told = false;
    for (std::uint64_t off = 0; off < size; off += 4096) {
        if (p[off + 5] != pattern_byte(off + 5, 401)) return 5;
        if (!told && off > (16ull << 20)) {
            (void)!::write(progress, "b", 1);  // the parent restarts the daemon now
            told = true;
        }
    }
    std::memset(wp + 65536, 0xA5, 4096);  // written after the restart
    auto f = c.value()->flush(w.value());
    if (!f) return 6;
    return 0;
}

// ---- The page cache across a restart ---------------------------------------------------

constexpr std::uint32_t k_cache_seed = 411;
constexpr std::uint64_t k_private_bytes = 1 << 20;                  // the PrivateWritable region
constexpr std::uint64_t k_written_pages[] = {0, 3, 200};           // of it, written before the restart
constexpr std::uint64_t k_written_at = 100, k_written_len = 300;    // bytes written in each

std::uint8_t written_byte(std::uint64_t page, std::uint64_t i) { return static_cast<std::uint8_t>(0xE5 ^ (page * 7) ^ i); }

// Every byte of [p, p + len) is byte file_offset + i of the pattern file.
bool matches_pattern(const volatile std::uint8_t* p, std::uint64_t file_offset, std::uint64_t len)
{
    for (std::uint64_t i = 0; i < len; ++i)
        if (p[i] != pattern_byte(file_offset + i, k_cache_seed)) return false;
    return true;
}

// The PrivateWritable region (the file's first k_private_bytes): the bytes written, the
// file's everywhere else.
bool private_view_ok(const volatile std::uint8_t* w, std::uint64_t page_size)
{
    for (std::uint64_t i = 0; i < k_private_bytes; ++i) {
        std::uint8_t want = pattern_byte(i, k_cache_seed);
        for (std::uint64_t pg : k_written_pages)
            if (i >= pg * page_size + k_written_at && i < pg * page_size + k_written_at + k_written_len)
                want = written_byte(pg, i - pg * page_size - k_written_at);
        if (w[i] != want) return false;
    }
    return true;
}

bool wait_go(int fd)
{
    char ch;
    return ::read(fd, &ch, 1) == 1;
}

// The client whose cache outlives its daemon: maps the file ReadOnly (whole) and
// PrivateWritable (its first MiB) through the daemon's cache, writes a few private pages,
// reads the first half ('a'), and after the restart the whole file ('b'). Exits 0 when
// every byte was right, at the parent's word (its regions keep the cache open meanwhile).
int cache_keeper(const std::string& sock, const std::string& data, std::uint64_t size, int up, int down)
{
    const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    auto c = libclient::Connection::connect({sock, "cache-keeper"});
    if (!c) return 3;
    auto r = c.value()->map_file(data, {0, size, Access::ReadOnly});
    auto w = c.value()->map_file(data, {0, k_private_bytes, Access::PrivateWritable});
    if (!r || !w) return 4;
    auto* wp = static_cast<volatile std::uint8_t*>(w->addr);
    for (std::uint64_t pg : k_written_pages)
        for (std::uint64_t i = 0; i < k_written_len; ++i) wp[pg * ps + k_written_at + i] = written_byte(pg, i);
    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
    if (!private_view_ok(wp, ps)) return 5;
    if (!matches_pattern(p, 0, size / 2)) return 6;  // the private writes are the region's own
    (void)!::write(up, "a", 1);
    if (!wait_go(down)) return 7;  // the daemon restarts meanwhile
    if (!matches_pattern(p, 0, size)) return 8;
    if (!private_view_ok(wp, ps)) return 9;
    (void)!::write(up, "b", 1);
    if (!wait_go(down)) return 10;
    return 0;
}

// A client of the next daemon only: maps the same file ReadOnly, no read-ahead (each load
// it causes is one it needed), reads the first half ('c'), then the whole file ('d').
int cache_sharer(const std::string& sock, const std::string& data, std::uint64_t size, int up, int down)
{
    if (!wait_go(down)) return 2;  // after the restart
    auto c = libclient::Connection::connect({sock, "cache-sharer"});
    if (!c) return 3;
    libclient::MapOptions o{0, size, Access::ReadOnly};
    o.prefetch = libclient::Prefetch::None;
    auto r = c.value()->map_file(data, o);
    if (!r) return 4;
    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
    if (!matches_pattern(p, 0, size / 2)) return 5;
    (void)!::write(up, "c", 1);
    if (!wait_go(down)) return 6;
    if (!matches_pattern(p, 0, size)) return 7;
    (void)!::write(up, "d", 1);
    if (!wait_go(down)) return 8;
    return 0;
}

// A Shared client of the page cache across a restart: it writes (a page of zeros among
// them: at a restart, zero pages the daemon did not load are punched unless the dirty set
// says a client wrote them), the daemon restarts, it writes more (also to a page it wrote
// before, whose protection was lifted then), flushes, and exits.
constexpr std::uint32_t k_shared_seed = 412;

void shared_writes_before(std::uint8_t* p, std::uint64_t ps)
{
    std::memset(p, 0x5A, ps);
    std::memset(p + ps, 0, ps);
    std::memset(p + 2 * ps + 100, 0xC3, 10);
}

void shared_writes_after(std::uint8_t* p, std::uint64_t ps)
{
    std::memset(p + 3 * ps, 0x77, ps);
    p[200] = 0x5B;  // page 0 again
}

int cache_shared_writer(const std::string& sock, const std::string& data, int up, int down)
{
    const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    auto c = libclient::Connection::connect({sock, "cache-writer"});
    if (!c) return 3;
    auto w = c.value()->map_file(data, {0, 1 << 20, Access::Shared, Tracking::UffdWp});
    if (!w) return 4;
    auto* p = static_cast<std::uint8_t*>(w->addr);
    shared_writes_before(p, ps);
    (void)!::write(up, "a", 1);
    if (!wait_go(down)) return 7;  // the daemon restarts meanwhile
    shared_writes_after(p, ps);
    auto f = c.value()->flush(w.value());
    if (!f) return 8;
    (void)!::write(up, "b", 1);
    if (!wait_go(down)) return 10;
    return 0;
}

std::string cache_figures(const libclient::Status& s)
{
    return "cache_bytes " + std::to_string(s.cache_bytes) + ", cache_files " + std::to_string(s.cache_files) +
           ", cache_loads " + std::to_string(s.cache_loads) + ", cache_hits " + std::to_string(s.cache_hits) +
           ", cache_evictions " + std::to_string(s.cache_evictions) + ", cache_refaults " +
           std::to_string(s.cache_refaults) + ", bytes_read " + std::to_string(s.bytes_read) + ", cache_budget " +
           std::to_string(s.cache_budget);
}

// The lines of a daemon's log about the cache and the descriptor store, and its last lines.
std::string log_digest(const std::string& path)
{
    std::istringstream in(slurp(path));
    std::vector<std::string> lines;
    std::string out, line;
    while (std::getline(in, line)) {
        lines.push_back(line);
        if (line.find("cache") != std::string::npos || line.find("descriptor store") != std::string::npos ||
            line.find("warn") != std::string::npos || line.find("error") != std::string::npos)
            out += line + "\n";
    }
    out += "... last lines:\n";
    for (std::size_t i = lines.size() > 20 ? lines.size() - 20 : 0; i < lines.size(); ++i) out += lines[i] + "\n";
    return out;
}


constexpr std::uint64_t k_fork_size = 8 << 20;

// A client's region of k_fork_size bytes, ReadOnly without read-ahead, from a file or (a
// URI) a store, its first half read. `fail` says why there is none (3: no connection, 4:
// no region, 5: wrong bytes).
struct HalfRead {
    std::unique_ptr<libclient::Connection> conn;
    libclient::Region region{};
    const volatile std::uint8_t* p = nullptr;
    int fail = 0;
};

HalfRead map_half_read(const std::string& sock, const char* name, const std::string& source, bool store)
{
    HalfRead h;
    auto c = libclient::Connection::connect({sock, name});
    if (!c) {
        h.fail = 3;
        return h;
    }
    h.conn = std::move(c.value());
    libclient::MapOptions o{0, k_fork_size, Access::ReadOnly};
    o.prefetch = libclient::Prefetch::None;
    auto r = store ? h.conn->map_store(source, o) : h.conn->map_file(source, o);
    if (!r) {
        h.fail = 4;
        return h;
    }
    h.region = r.value();
    h.p = static_cast<const volatile std::uint8_t*>(h.region.addr);
    if (!matches_pattern(h.p, 0, k_fork_size / 2)) h.fail = 5;
    return h;
}

// A client that forks with its region half loaded (ReadOnly, in the page cache, no
// read-ahead). Each child that checks says 'a' once it has read the first page, and at the
// word reads the whole region (after the daemon's restart) and sends one byte: 0 when every
// byte was right. The families:
enum class Family {
    ParentWaits,   // one child; the parent waits for it
    ParentLeaves,  // one child; the parent unmaps its region and exits at once
    TwoChildren,   // two children that check; the parent leaves
    Grandchild,    // the child forks the one that checks and exits; the parent leaves
};
int fork_keeper(const std::string& sock, const std::string& data, Family family, int up, int down)
{
    HalfRead h = map_half_read(sock, "fork-keeper", data, false);
    if (h.fail) return h.fail;
    const volatile std::uint8_t* p = h.p;
    auto check = [&] {
        const bool before = matches_pattern(p, 0, 4096);
        (void)!::write(up, "a", 1);
        if (!wait_go(down)) _exit(21);
        const unsigned char result = !before ? 22 : matches_pattern(p, 0, k_fork_size) ? 0 : 23;
        (void)!::write(up, &result, 1);
        _exit(result);
    };
    pid_t child = ::fork();
    if (child < 0) return 6;
    if (child == 0) {
        if (family != Family::Grandchild) check();
        const pid_t grandchild = ::fork();
        if (grandchild == 0) check();
        _exit(grandchild > 0 ? 0 : 6);
    }
    if (family == Family::TwoChildren) {
        const pid_t second = ::fork();
        if (second < 0) return 6;
        if (second == 0) check();
    }
    int st = 0;
    if (family == Family::ParentWaits) {
        ::waitpid(child, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
    }
    if (family == Family::Grandchild && (::waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0))
        return 8;
    return h.conn->unmap(h.region).ok() ? 0 : 7;
}

// A client that reads the first half of its region, says 'a', and at the word reads the
// rest (after the daemon's restart); exits 0 when every byte was right.
int half_reader(const std::string& sock, const std::string& data, int up, int down)
{
    HalfRead h = map_half_read(sock, "half-reader", data, false);
    if (h.fail) return h.fail;
    (void)!::write(up, "a", 1);
    if (!wait_go(down)) return 6;
    return matches_pattern(h.p, 0, k_fork_size) ? 0 : 7;
}

// A client whose region comes from an NBD export (a store a restarted daemon does not
// take back): reads its first half, forks, and the child says 'a', and at the word reads
// the whole region and sends one byte (0 when every byte was right). The parent waits for
// the child and exits with its status (100 + the signal that killed it).
int store_forker(const std::string& sock, const std::string& uri, int up, int down)
{
    HalfRead h = map_half_read(sock, "store-forker", uri, true);
    if (h.fail) return h.fail;
    const volatile std::uint8_t* p = h.p;
    const pid_t child = ::fork();
    if (child < 0) return 6;
    if (child == 0) {
        (void)!::write(up, "a", 1);
        if (!wait_go(down)) _exit(21);
        const unsigned char result = matches_pattern(p, 0, k_fork_size) ? 0 : 23;
        (void)!::write(up, &result, 1);
        _exit(result);
    }
    int st = 0;
    ::waitpid(child, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

// Kills (by pid) the processes a test started that are still running when it ends early.
struct ChildReaper {
    std::vector<pid_t*> pids;
    ~ChildReaper()
    {
        for (pid_t* pid : pids)
            if (*pid > 0 && ::waitpid(*pid, nullptr, WNOHANG) == 0) {
                ::kill(*pid, SIGKILL);
                ::waitpid(*pid, nullptr, 0);
            }
    }
};

}  // namespace

TEST_CASE("the daemon dies or stops while a client faults and the next daemon serves it on", "[fdstore][restart]")
{
    const std::string how = GENERATE(std::string("SIGKILL"), std::string("SIGTERM"));
    INFO("the daemon stops by " << how);
    TempDir dir;
    make_file(dir.file("data"), 128ull << 20, 401);
    make_file(dir.file("shared"), 1 << 20, 402);
    auto expect_shared = read_file(dir.file("shared"));
    std::memset(expect_shared.data(), 0x5A, 8192);
    std::memset(expect_shared.data() + 65536, 0xA5, 4096);
    const std::string sock = dir.file("pagerd.sock");
    ServiceManager sm(dir.file("notify"));
    pid_t daemon = sm.start({"--socket", sock, "--log-level", "debug"}, dir.file("log"));
    REQUIRE(sm.pump("READY=1", 10s));

    int progress[2];
    REQUIRE(::pipe(progress) == 0);
    const pid_t client = ::fork();
    REQUIRE(client >= 0);
    if (client == 0) {
        reset_fatal_signals();
        _exit(restart_client(sock, dir.file("data"), dir.file("shared"), progress[1]));
    }
    REQUIRE(read_stage(progress[0], sm));
    REQUIRE(read_stage(progress[0], sm));  // in the middle of faulting
    ::kill(daemon, how == "SIGKILL" ? SIGKILL : SIGTERM);
    int st = wait_daemon(daemon, sm);
    sm.pump("", 200ms);
    INFO(slurp(dir.file("log")));
    CHECK(sm.stored_with_prefix("c") >= 6);  // state, socket, uffd, files and memfd of the client
    std::this_thread::sleep_for(300ms);      // faults pile up while no daemon runs

    daemon = sm.start({"--socket", sock, "--log-level", "debug"}, dir.file("log"));
    REQUIRE(sm.pump("READY=1", 10s));
    const int cst = wait_exit_pumping(client, sm, 60s, "the client did not finish after the restart");
    INFO(slurp(dir.file("log")));
    CHECK(exited_with(cst, 0));
    CHECK(read_file(dir.file("shared")) == expect_shared);
    CHECK_THAT(slurp(dir.file("log")), Catch::Contains("taken back from the descriptor store"));
    // The client is gone: its descriptors leave the store.
    sm.pump("", 500ms);
    CHECK(sm.stored_with_prefix("c") == 0);
    ::kill(daemon, SIGTERM);
    st = wait_daemon(daemon, sm);
    CHECK(exited_with(st, 0));
    ::close(progress[0]);
    ::close(progress[1]);
}

TEST_CASE("a waiting prefetch is answered when the daemon restarts, not left hanging", "[fdstore][restart][prefetch]")
{
    TempDir dir;
    const std::uint64_t size = 1ull << 30;  // sparse: the prefetch reads zeros from the page cache
    {
        util::UniqueFd f(::open(dir.file("data").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
        REQUIRE(f);
        REQUIRE(::ftruncate(f.get(), static_cast<off_t>(size)) == 0);
    }
    const std::string sock = dir.file("pagerd.sock");
    ServiceManager sm(dir.file("notify"));
    pid_t daemon = sm.start({"--socket", sock, "--log-level", "debug"}, dir.file("log"));
    REQUIRE(sm.pump("READY=1", 10s));

    int progress[2];
    REQUIRE(::pipe(progress) == 0);
    const pid_t client = ::fork();
    REQUIRE(client >= 0);
    if (client == 0) {
        reset_fatal_signals();
        auto c = libclient::Connection::connect({sock, "prefetcher"});
        if (!c) _exit(3);
        auto r = c.value()->map_file(dir.file("data"), {0, size, Access::ReadOnly});
        if (!r) _exit(4);
        (void)!::write(progress[1], "a", 1);
        auto p = c.value()->prefetch(r->addr, size, /*wait=*/true, /*wait_ms=*/-1);
        if (p || p.error().code != 11 || p.error().message.find("restarted") == std::string::npos) _exit(5);
        const auto* bytes = static_cast<const volatile std::uint8_t*>(r->addr);
        for (std::uint64_t off = 0; off < size; off += 64ull << 20)  // served by the next daemon
            if (bytes[off] != 0) _exit(6);
        _exit(0);
    }
    REQUIRE(read_stage(progress[0], sm));
    // Stop the daemon once it is loading the range, i.e. the request is its, not the next one's.
    auto watcher = libclient::Connection::connect({sock, "watcher"});
    REQUIRE(watcher);
    bool loading = false;
    for (int i = 0; i < 5000 && !loading; ++i) {
        auto list = watcher.value()->regions();
        REQUIRE(list);
        for (const auto& e : list.value()) loading = loading || (e.pid == static_cast<std::uint32_t>(client) && e.prefetch_pending > 0);
        if (!loading) {
            sm.pump();
            std::this_thread::sleep_for(1ms);
        }
    }
    REQUIRE(loading);
    watcher.value().reset();
    ::kill(daemon, SIGTERM);
    int st = wait_daemon(daemon, sm);
    sm.pump("", 200ms);
    daemon = sm.start({"--socket", sock, "--log-level", "debug"}, dir.file("log"));
    REQUIRE(sm.pump("READY=1", 10s));
    const int cst = wait_exit_pumping(client, sm, 30s, "the client is still waiting for its prefetch after the restart");
    INFO(slurp(dir.file("log")));
    CHECK(exited_with(cst, 0));
    ::kill(daemon, SIGTERM);
    st = wait_daemon(daemon, sm);
    CHECK(exited_with(st, 0));
    ::close(progress[0]);
    ::close(progress[1]);
}

TEST_CASE("restart through the descriptor store keeps the page cache: nothing resident is loaded again", "[fdstore][restart][cache]")
{
    const std::string how = GENERATE(std::string("SIGTERM"), std::string("SIGKILL"));
    INFO("the first daemon stops by " << how);
    const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t size = 32ull << 20, half = size / 2, pages = size / ps, half_pages = half / ps;
    const std::uint64_t margin = 64;  // pages: read-ahead at the edge of what was resident
    TempDir dir;
    make_file(dir.file("data"), size, k_cache_seed);
    const std::string sock = dir.file("pagerd.sock"), log1 = dir.file("log1"), log2 = dir.file("log2");
    auto logs = [&] { return "first daemon:\n" + log_digest(log1) + "second daemon:\n" + log_digest(log2); };
    ServiceManager sm(dir.file("notify"));
    pid_t daemon = sm.start({"--socket", sock, "--log-level", "debug"}, log1);
    pid_t keeper = -1, sharer = -1;
    ChildReaper reaper{{&keeper, &sharer, &daemon}};
    REQUIRE(sm.pump("READY=1", 10s));

    // Both clients are forked before this process opens a connection (see run_child).
    int keeper_up[2], keeper_down[2], sharer_up[2], sharer_down[2];
    REQUIRE(::pipe(keeper_up) == 0);
    REQUIRE(::pipe(keeper_down) == 0);
    REQUIRE(::pipe(sharer_up) == 0);
    REQUIRE(::pipe(sharer_down) == 0);
    keeper = ::fork();
    REQUIRE(keeper >= 0);
    if (keeper == 0) {
        reset_fatal_signals();
        ::alarm(180);
        ::close(keeper_up[0]);
        ::close(keeper_down[1]);
        _exit(cache_keeper(sock, dir.file("data"), size, keeper_up[1], keeper_down[0]));
    }
    sharer = ::fork();
    REQUIRE(sharer >= 0);
    if (sharer == 0) {
        reset_fatal_signals();
        ::alarm(180);
        ::close(sharer_up[0]);
        ::close(sharer_down[1]);
        _exit(cache_sharer(sock, dir.file("data"), size, sharer_up[1], sharer_down[0]));
    }
    for (int fd : {keeper_up[1], keeper_down[0], sharer_up[1], sharer_down[0]}) ::close(fd);
    // A client's stage, or why it did not come: its exit status.
    auto stage = [&](int fd, pid_t& pid, const char* what) {
        if (read_stage(fd, sm)) return;
        const int st = wait_exit_pumping(pid, sm, 10s, "a client neither reported its stage nor exited");
        pid = -1;
        INFO(logs());
        FAIL(what << ": the client ended with status " << st << " (exit code " << (WIFEXITED(st) ? WEXITSTATUS(st) : -1)
                  << ", signal " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0) << ")");
    };
    auto go = [](int fd) { REQUIRE(::write(fd, "g", 1) == 1); };
    // The daemon's status through a connection of its own, opened and closed while the
    // clients wait (nothing else makes it write to NOTIFY_SOCKET meanwhile).
    auto status_now = [&] {
        sm.pump();
        libclient::Status s;
        {
            auto w = connect_within(sock, 5s);
            REQUIRE(w);
            auto got = w->status();
            REQUIRE(got);
            s = got.value();
        }
        sm.pump("", 100ms);
        return s;
    };

    // 1. The first daemon: the keeper has read the first half through the cache.
    stage(keeper_up[0], keeper, "reading the first half before the restart");
    const libclient::Status before = status_now();
    INFO("first daemon before the restart: " << cache_figures(before));
    CHECK(before.cache_files == 1);  // both regions of the keeper share the file's cache
    REQUIRE(before.cache_bytes >= half);
    CHECK(before.cache_loads >= half_pages);

    // 2. The restart, as the existing tests do it.
    ::kill(daemon, how == "SIGKILL" ? SIGKILL : SIGTERM);
    const int st1 = wait_daemon(daemon, sm);
    daemon = -1;
    sm.pump("", 200ms);
    if (how == "SIGTERM") CHECK(exited_with(st1, 0));
    // state, sock, uffd and the file of each region ("c1."), and the file's cache, stored
    // once for both regions ("cache.").
    CHECK(sm.stored_with_prefix("c1.") >= 5);
    CHECK(sm.stored_with_prefix("cache.") == 1);
    daemon = sm.start({"--socket", sock, "--log-level", "debug"}, log2);
    REQUIRE(sm.pump("READY=1", 10s));
    const libclient::Status adopted = status_now();
    INFO("second daemon once started: " << cache_figures(adopted));
    {
        INFO(logs());
        CHECK_THAT(slurp(log2), Catch::Contains("taken back from the descriptor store with 2 region(s)"));
        CHECK_THAT(slurp(log2), !Catch::Contains("dropping"));
        CHECK(adopted.cache_files == 1);
        CHECK(adopted.cache_bytes >= before.cache_bytes);  // nothing resident was lost
        CHECK(adopted.bytes_read == 0);
        CHECK(adopted.cache_loads == 0);  // taking the cache back loads nothing from the file
    }

    // 3. A new client of the same file reads the first half: all of it from the adopted
    //    cache, shared (no second cache of the file), nothing loaded.
    go(sharer_down[1]);
    stage(sharer_up[0], sharer, "the second client reading the first half after the restart");
    const libclient::Status shared_half = status_now();
    INFO("second daemon after the second client read the first half: " << cache_figures(shared_half));
    {
        INFO(logs());
        CHECK(shared_half.cache_files == 1);
        CHECK(shared_half.cache_loads == adopted.cache_loads);
        CHECK(shared_half.bytes_read == adopted.bytes_read);
        CHECK(shared_half.cache_hits - adopted.cache_hits >= half_pages);
    }

    // 4. The keeper reads the whole file: only what was not resident is loaded.
    go(keeper_down[1]);
    stage(keeper_up[0], keeper, "reading the whole file after the restart");
    const libclient::Status whole = status_now();
    INFO("second daemon after the keeper read the whole file: " << cache_figures(whole));
    {
        INFO(logs());
        CHECK(whole.cache_files == 1);
        CHECK(whole.cache_evictions == 0);
        CHECK(whole.cache_bytes >= size);  // everything resident now
        // The new daemon's loads: the second half's pages at most.
        CHECK(whole.cache_loads <= pages - half_pages + margin);
        // And not one page of what it took back.
        CHECK(whole.cache_loads - shared_half.cache_loads <= pages - adopted.cache_bytes / ps + margin);
        CHECK(whole.bytes_read - shared_half.bytes_read <= (pages - adopted.cache_bytes / ps + margin) * ps);
    }

    // 5. The second client reads the whole file: all resident, nothing loaded.
    go(sharer_down[1]);
    stage(sharer_up[0], sharer, "the second client reading the whole file");
    const libclient::Status shared_whole = status_now();
    INFO("second daemon after the second client read the whole file: " << cache_figures(shared_whole));
    {
        INFO(logs());
        CHECK(shared_whole.cache_files == 1);
        CHECK(shared_whole.cache_loads == whole.cache_loads);
        CHECK(shared_whole.bytes_read == whole.bytes_read);
    }

    go(keeper_down[1]);
    go(sharer_down[1]);
    const int kst = wait_exit_pumping(keeper, sm, 30s, "the first client did not exit");
    keeper = -1;
    const int sst = wait_exit_pumping(sharer, sm, 30s, "the second client did not exit");
    sharer = -1;
    CHECK(exited_with(kst, 0));
    CHECK(exited_with(sst, 0));
    ::kill(daemon, SIGTERM);
    const int st2 = wait_daemon(daemon, sm);
    daemon = -1;
    CHECK(exited_with(st2, 0));
    for (int fd : {keeper_up[0], keeper_down[1], sharer_up[0], sharer_down[1]}) ::close(fd);
}

TEST_CASE("a Shared client's writes in the page cache survive a restart, zeros included", "[fdstore][restart][cache][shared]")
{
    const std::string how = GENERATE(std::string("SIGTERM"), std::string("SIGKILL"));
    INFO("the first daemon stops by " << how);
    const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    TempDir dir;
    make_file(dir.file("data"), 1 << 20, k_shared_seed);
    auto model = read_file(dir.file("data"));
    shared_writes_before(model.data(), ps);
    const auto model_before = model;  // what the file holds once the first writes are written
    shared_writes_after(model.data(), ps);
    const std::string sock = dir.file("pagerd.sock"), log1 = dir.file("log1"), log2 = dir.file("log2");
    auto logs = [&] { return "first daemon:\n" + log_digest(log1) + "second daemon:\n" + log_digest(log2); };
    ServiceManager sm(dir.file("notify"));
    pid_t daemon = sm.start({"--socket", sock, "--log-level", "debug"}, log1);
    pid_t writer = -1;
    ChildReaper reaper{{&writer, &daemon}};
    REQUIRE(sm.pump("READY=1", 10s));
    int up[2], down[2];
    REQUIRE(::pipe(up) == 0);
    REQUIRE(::pipe(down) == 0);
    writer = ::fork();
    REQUIRE(writer >= 0);
    if (writer == 0) {
        reset_fatal_signals();
        ::alarm(120);
        ::close(up[0]);
        ::close(down[1]);
        _exit(cache_shared_writer(sock, dir.file("data"), up[1], down[0]));
    }
    ::close(up[1]);
    ::close(down[0]);
    auto stage = [&](const char* what) {
        if (read_stage(up[0], sm)) return;
        const int st = wait_exit_pumping(writer, sm, 10s, "the client neither reported its stage nor exited");
        writer = -1;
        INFO(logs());
        FAIL(what << ": the client ended with status " << st);
    };
    stage("writing before the restart");
    sm.pump("", 200ms);
    CHECK(read_file(dir.file("data")) != model);  // nothing flushed yet
    ::kill(daemon, how == "SIGKILL" ? SIGKILL : SIGTERM);
    const int st1 = wait_daemon(daemon, sm);
    daemon = -1;
    sm.pump("", 200ms);
    if (how == "SIGTERM") {
        CHECK(exited_with(st1, 0));
        // A stop under the descriptor store may be for good (systemd then releases the
        // store): the writes so far are in the file before the daemon exits.
        CHECK(read_file(dir.file("data")) == model_before);
    }
    // The cache and its dirty set, each stored once.
    CHECK(sm.stored_with_prefix("cache.") == 1);
    CHECK(sm.stored_with_prefix("cachebits.") == 1);
    daemon = sm.start({"--socket", sock, "--log-level", "debug"}, log2);
    REQUIRE(sm.pump("READY=1", 10s));
    REQUIRE(::write(down[1], "g", 1) == 1);
    stage("writing and flushing after the restart");
    {
        INFO(logs());
        const auto file = read_file(dir.file("data"));
        REQUIRE(file.size() == model.size());
        for (std::uint64_t pg = 0; pg < 4; ++pg)
            CHECK(std::memcmp(file.data() + pg * ps, model.data() + pg * ps, ps) == 0);
        CHECK(file == model);
    }
    REQUIRE(::write(down[1], "g", 1) == 1);
    const int wst = wait_exit_pumping(writer, sm, 30s, "the client did not exit");
    writer = -1;
    CHECK(exited_with(wst, 0));
    ::kill(daemon, SIGTERM);
    CHECK(exited_with(wait_daemon(daemon, sm), 0));
    daemon = -1;
    CHECK(read_file(dir.file("data")) == model);
    ::close(up[0]);
    ::close(down[1]);
}

// A client process (fork_keeper, half_reader, store_forker) on a daemon playing systemd's
// part, with the data file and the pipes: the client says 'a' (once per checking child)
// on `up` and waits for a byte on `down`.
struct ClientRun {
    TempDir dir;
    std::string sock = dir.file("pagerd.sock");
    std::vector<std::string> args{"--socket", sock, "--log-level", "debug"};
    ServiceManager sm{dir.file("notify")};
    pid_t daemon = -1, parent = -1;
    int up[2] = {-1, -1}, down[2] = {-1, -1};
    ChildReaper reaper{{&parent, &daemon}};

    ClientRun() { make_file(dir.file("data"), k_fork_size, k_cache_seed); }
    ~ClientRun()
    {
        ::close(up[0]);
        ::close(down[1]);  // children still waiting for the word exit
    }
    void start_daemon()
    {
        daemon = sm.start(args, dir.file("log"));
        REQUIRE(sm.pump("READY=1", 10s));
    }
    void kill_daemon(int sig)
    {
        ::kill(daemon, sig);
        const int st = wait_daemon(daemon, sm);
        daemon = -1;
        if (sig == SIGTERM) CHECK(exited_with(st, 0));
        sm.pump("", 200ms);
    }
    // Runs client(up, down) in a process of its own, and waits for `checkers` 'a'.
    template <class F>
    void run(F client, int checkers)
    {
        // Close-on-exec: the daemons started later must not hold the children's pipes.
        REQUIRE(::pipe2(up, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(down, O_CLOEXEC) == 0);
        parent = ::fork();
        REQUIRE(parent >= 0);
        if (parent == 0) {
            reset_fatal_signals();
            _exit(client(up[1], down[0]));
        }
        ::close(up[1]);
        ::close(down[0]);
        for (int i = 0; i < checkers; ++i) REQUIRE(read_byte(up[0], sm) == 'a');
    }
    void go(int n = 1)
    {
        for (int i = 0; i < n; ++i) REQUIRE(::write(down[1], "g", 1) == 1);
    }
    // The daemon stores a child a moment after the fork returns (the fork waits only for
    // the event to be read), and forgets one a moment after it exits: waits until n
    // clients' state and userfaultfd are stored.
    bool stored_are(std::size_t n)
    {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while ((sm.stored_with_suffix(".state") != n || sm.stored_with_suffix(".uffd0") != n) &&
               std::chrono::steady_clock::now() < deadline)
            sm.pump("", 20ms);
        return sm.stored_with_suffix(".state") == n && sm.stored_with_suffix(".uffd0") == n;
    }
    int wait_parent()
    {
        const int st = wait_exit_pumping(parent, sm, 30s, "the client did not exit");
        parent = -1;
        return st;
    }
};

TEST_CASE("a forked child is kept in the descriptor store when its daemon is killed, and the next daemon serves it",
          "[fdstore][restart][fork]")
{
    const Family family = GENERATE(Family::ParentWaits, Family::ParentLeaves, Family::TwoChildren, Family::Grandchild);
    INFO("family " << static_cast<int>(family));
    const int checkers = family == Family::TwoChildren ? 2 : 1;
    ClientRun k;
    k.start_daemon();
    k.run([&](int up, int down) { return fork_keeper(k.sock, k.dir.file("data"), family, up, down); }, checkers);
    if (family == Family::ParentWaits) {
        CHECK(k.stored_are(2));  // the parent's and the child's state and userfaultfd
    } else {
        CHECK(exited_with(k.wait_parent(), 0));
        // The parent is gone, and the grandchild's parent: the checking children are left,
        // their files in the store in capsules of their own.
        CHECK(k.stored_are(static_cast<std::size_t>(checkers)));
        CHECK(k.sm.stored_with_suffix(".filebox") == static_cast<std::size_t>(checkers));
    }
    k.kill_daemon(SIGKILL);
    k.start_daemon();
    k.go(checkers);
    // Not kept, a child's userfaultfd would have closed with the daemon, and the pages it
    // had not loaded would read zeros (23).
    INFO(log_digest(k.dir.file("log")));
    for (int i = 0; i < checkers; ++i) CHECK(read_byte(k.up[0], k.sm, 30s) == 0);
    if (family == Family::ParentWaits) CHECK(exited_with(k.wait_parent(), 0));
    CHECK_THAT(slurp(k.dir.file("log")), Catch::Contains(", forked from client"));
    // Everyone is gone: nothing of theirs stays in the store.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (k.sm.stored_with_prefix("c") != 0 && std::chrono::steady_clock::now() < deadline) k.sm.pump("", 20ms);
    CHECK(k.sm.stored_with_prefix("c") == 0);
    k.kill_daemon(SIGTERM);
}

TEST_CASE("a forked child is not kept at a SIGTERM: once systemd drops the store, pages it did not load raise SIGBUS",
          "[fdstore][fork]")
{
    ClientRun k;
    k.start_daemon();
    k.run([&](int up, int down) { return fork_keeper(k.sock, k.dir.file("data"), Family::ParentWaits, up, down); }, 1);
    CHECK(k.stored_are(2));
    k.kill_daemon(SIGTERM);
    CHECK(k.sm.stored_with_suffix(".state") == 1);  // the parent's, for a next daemon
    // The service is stopped for good: systemd closes what it stored.
    k.sm.drop_store();
    k.go();
    const int st = k.wait_parent();
    INFO("the parent's status " << st << " (100 + the signal that killed the child)");
    CHECK(exited_with(st, 100 + SIGBUS));
}

TEST_CASE("a client the next daemon cannot take back leaves the store and gets SIGBUS, not a wait for ever",
          "[fdstore][restart]")
{
    ClientRun k;
    k.start_daemon();
    k.run([&](int up, int down) { return half_reader(k.sock, k.dir.file("data"), up, down); }, 1);
    k.kill_daemon(SIGKILL);
    REQUIRE(k.sm.stored_with_suffix(".uffd0") == 1);
    k.sm.erase_suffix(".uffd0");  // the client cannot be taken back without it
    k.start_daemon();
    k.go();
    // Its socket left the store with the rest: the library sees the connection close and
    // answers the faults with SIGBUS. Kept there, the faults would wait for ever.
    const int st = wait_exit_pumping(k.parent, k.sm, 20s, "the client waited on a daemon that will never serve it");
    k.parent = -1;
    INFO(log_digest(k.dir.file("log")));
    CHECK(killed_by(st, SIGBUS));
    CHECK(k.sm.stored_with_prefix("c") == 0);
    CHECK_THAT(slurp(k.dir.file("log")), Catch::Contains("is incomplete; dropping it"));
    k.kill_daemon(SIGTERM);
}

TEST_CASE("a forked child's region of an NBD export, not kept across a restart, raises SIGBUS after it, never zeros",
          "[fdstore][restart][fork][nbd]")
{
    ClientRun k;
    Nbdkit server("file", {k.dir.file("data")});
    k.args.insert(k.args.end(), {"--allow-store", server.allow_prefix()});
    k.start_daemon();
    k.run([&](int up, int down) { return store_forker(k.sock, server.uri(), up, down); }, 1);
    CHECK(k.stored_are(2));
    // Killed, and started again: the child is taken back without its export's region.
    k.kill_daemon(SIGKILL);
    k.start_daemon();
    k.sm.pump("", 300ms);
    // Stopped for good: the daemon lets go of the child, and systemd of what it stored. The
    // child's unloaded pages of the export must raise SIGBUS, not read what the cache's
    // memory holds there (zeros).
    k.kill_daemon(SIGTERM);
    k.sm.drop_store();
    INFO(log_digest(k.dir.file("log")));
    CHECK_THAT(slurp(k.dir.file("log")), Catch::Contains("forked from client"));
    k.go();
    const int st = k.wait_parent();
    INFO("the parent's status " << st << " (100 + the signal that killed the child; 23: it read wrong bytes)");
    CHECK(exited_with(st, 100 + SIGBUS));
}
