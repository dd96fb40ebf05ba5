#include "slowfs_mount.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#ifndef SLOWFS_BINARY
#error "SLOWFS_BINARY must name the slowfs program"
#endif

namespace pagerd::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr long kFuseSuperMagic = 0x65735546;

std::runtime_error sys_error(const std::string& what)
{
    return std::runtime_error(what + ": " + std::strerror(errno));
}

void make_dir(const std::string& path)
{
    if (::mkdir(path.c_str(), 0755) == -1 && errno != EEXIST) throw sys_error("mkdir " + path);
}

std::string canonical(const std::string& path)
{
    char buf[PATH_MAX];
    if (!::realpath(path.c_str(), buf)) throw sys_error("realpath " + path);
    return buf;
}

// Waits up to `timeout` for pid; SIGKILLs it after that. Returns the wait status.
int reap(pid_t pid, std::chrono::milliseconds timeout)
{
    const auto deadline = Clock::now() + timeout;
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r == -1 && errno != EINTR) return -1;
        if (Clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
            }
            return status;
        }
        std::this_thread::sleep_for(2ms);
    }
}

// umount2(MNT_DETACH) as root; fusermount3 -u -z otherwise.
void detach(const std::string& mountpoint)
{
    if (::umount2(mountpoint.c_str(), MNT_DETACH) == 0 || errno == EINVAL) return;
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::execlp("fusermount3", "fusermount3", "-u", "-z", mountpoint.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    if (pid > 0) reap(pid, 10s);
}

// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(const std::string& s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() &&
            s.substr(i + 1, 3).find_first_not_of("01234567") == std::string::npos) {
            out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
            i += 3;
            continue;
        }
        out += s[i];
    }
    return out;
}

struct MountEntry {
    long id = -1;
    std::string path;
};

std::vector<MountEntry> mounts()
{
    std::vector<MountEntry> out;
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        MountEntry e;
        std::string parent, dev, root, mnt;
        if (fields >> e.id >> parent >> dev >> root >> mnt) {
            e.path = unescape_mountinfo(mnt);
            out.push_back(std::move(e));
        }
    }
    return out;
}

// A FUSE mount whose daemon is gone answers ENOTCONN. Once our slowfs has been reaped,
// a mount at its path that still answers is not ours (mount ids are reused, so they
// cannot tell).
bool dead_mount(const std::string& path)
{
    struct statfs sfs{};
    return ::statfs(path.c_str(), &sfs) == -1 && errno == ENOTCONN;
}

}  // namespace

bool is_mount_point(const std::string& path)
{
    for (const auto& e : mounts())
        if (e.path == path) return true;
    return false;
}

SlowFs::SlowFs(std::string backing, std::string mountpoint, int delay_ms)
    : SlowFs(std::move(backing), std::move(mountpoint), SlowFsOptions{delay_ms, false, false})
{
}

SlowFs::SlowFs(std::string backing, std::string mountpoint, const SlowFsOptions& options)
{
    make_dir(backing);
    make_dir(mountpoint);
    m_backing = canonical(backing);
    m_mountpoint = canonical(mountpoint);

    struct statfs sfs{};
    if (::statfs(m_mountpoint.c_str(), &sfs) == -1) {
        if (errno != ENOTCONN) throw sys_error("statfs " + m_mountpoint);
        detach(m_mountpoint);  // left by a slowfs that was killed
        if (::statfs(m_mountpoint.c_str(), &sfs) == -1) throw sys_error("statfs " + m_mountpoint);
    }
    if (sfs.f_type == kFuseSuperMagic) {
        throw std::runtime_error(m_mountpoint + " is already a FUSE mount");
    }

    char tmpl[] = "/tmp/slowfs-XXXXXX";
    if (!::mkdtemp(tmpl)) throw sys_error("mkdtemp");
    m_dir = tmpl;
    m_gate = m_dir + "/gate";
    if (options.read_gate) m_read_gate = m_dir + "/read-gate";
    m_log = m_dir + "/slowfs.log";
    const int log_fd = ::open(m_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd == -1) {
        const auto e = sys_error("open " + m_log);
        cleanup_files();
        throw e;
    }

    // Everything the child needs, made before fork (the test may have threads).
    std::vector<std::string> args = {SLOWFS_BINARY, m_backing, m_mountpoint, "--write-delay-ms",
                                     std::to_string(options.delay_ms), "--gate", m_gate};
    if (options.read_gate) {
        args.push_back("--read-gate");
        args.push_back(m_read_gate);
    }
    if (options.direct_io) args.push_back("--direct-io");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();

    m_pid = ::fork();
    if (m_pid == 0) {
        // slowfs unmounts and exits on SIGTERM: so also when the test dies without ~SlowFs.
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(127);
        const int null_fd = ::open("/dev/null", O_RDONLY);
        if (null_fd == -1 || ::dup2(null_fd, 0) == -1 || ::dup2(log_fd, 1) == -1 || ::dup2(log_fd, 2) == -1)
            ::_exit(127);
        // Descriptors of the test (sockets, pipes, uffds) must not live on in slowfs.
        ::close_range(3, ~0U, 0);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(log_fd);
    if (m_pid == -1) {
        cleanup_files();
        errno = fork_errno;
        throw sys_error("fork");
    }

    const auto deadline = Clock::now() + 10s;
    for (;;) {
        int status = 0;
        if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
            m_pid = -1;
            if (dead_mount(m_mountpoint)) detach(m_mountpoint);
            const std::string out = log();
            cleanup_files();
            throw std::runtime_error("slowfs exited before the mount was live (status " +
                                     std::to_string(status) + "): " + out);
        }
        if (::statfs(m_mountpoint.c_str(), &sfs) == 0 && sfs.f_type == kFuseSuperMagic) break;
        if (Clock::now() > deadline) {
            stop();
            const std::string out = log();
            cleanup_files();
            throw std::runtime_error("slowfs did not mount " + m_mountpoint + " within 10 s: " + out);
        }
        std::this_thread::sleep_for(2ms);
    }
}

SlowFs::~SlowFs()
{
    const int status = stop();
    if (status > 0)
        std::fprintf(stderr, "slowfs on %s ended with wait status %d; its output:\n%s\n",
                     m_mountpoint.c_str(), status, log().c_str());
    cleanup_files();
}

int SlowFs::stop()
{
    if (m_pid <= 0) return -1;
    open_gate();
    open_read_gate();
    ::kill(m_pid, SIGTERM);
    const int status = reap(m_pid, 10s);
    m_pid = -1;
    // A clean exit has unmounted; after a crash or SIGKILL the mount is left dead. A live
    // one there is another SlowFs's, which replaced our dead mount meanwhile.
    if (dead_mount(m_mountpoint)) detach(m_mountpoint);
    return status;
}

void SlowFs::cleanup_files()
{
    if (m_dir.empty()) return;
    ::unlink(m_gate.c_str());
    if (!m_read_gate.empty()) {
        ::unlink(m_read_gate.c_str());
        ::unlink((m_read_gate + ".new").c_str());
    }
    ::unlink(m_log.c_str());
    ::rmdir(m_dir.c_str());
    m_dir.clear();
}

std::string SlowFs::path(const std::string& name) const
{
    return m_mountpoint + "/" + name;
}

std::string SlowFs::backing_path(const std::string& name) const
{
    return m_backing + "/" + name;
}

void SlowFs::close_gate()
{
    const int fd = ::open(m_gate.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1) throw sys_error("create gate " + m_gate);
    ::close(fd);
}

void SlowFs::open_gate()
{
    if (!m_gate.empty() && ::unlink(m_gate.c_str()) == -1 && errno != ENOENT)
        throw sys_error("remove gate " + m_gate);
}

void SlowFs::close_read_gate()
{
    if (m_read_gate.empty()) throw std::logic_error("close_read_gate: mounted without SlowFsOptions::read_gate");
    const int fd = ::open(m_read_gate.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) throw sys_error("create read gate " + m_read_gate);
    ::close(fd);
}

void SlowFs::close_read_gate(std::uint64_t offset, std::uint64_t length, unsigned max_held)
{
    if (m_read_gate.empty()) throw std::logic_error("close_read_gate: mounted without SlowFsOptions::read_gate");
    // Whole or not at all: slowfs reads the file when a request arrives.
    const std::string tmp = m_read_gate + ".new";
    const std::string text = std::to_string(offset) + " " + std::to_string(length) + " " + std::to_string(max_held) + "\n";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) throw sys_error("create " + tmp);
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!ok || ::rename(tmp.c_str(), m_read_gate.c_str()) == -1) throw sys_error("write read gate " + m_read_gate);
}

void SlowFs::open_read_gate()
{
    if (!m_read_gate.empty() && ::unlink(m_read_gate.c_str()) == -1 && errno != ENOENT)
        throw sys_error("remove read gate " + m_read_gate);
}

unsigned SlowFs::blocked_reads() const { return stats().read_blocked; }

bool SlowFs::wait_blocked_reads(unsigned n, std::chrono::milliseconds timeout) const
{
    const auto deadline = Clock::now() + timeout;
    while (blocked_reads() < n) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

SlowFsStats SlowFs::stats() const
{
    const std::string file = path(".slowfs-stats");
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd == -1) throw sys_error("open " + file);
    char buf[512];
    const ssize_t n = ::read(fd, buf, sizeof buf - 1);
    const int e = errno;
    ::close(fd);
    if (n < 0) {
        errno = e;
        throw sys_error("read " + file);
    }
    std::istringstream in(std::string(buf, static_cast<std::size_t>(n)));
    std::string k1, k2, k3;
    SlowFsStats s;
    if (!(in >> k1 >> s.writes >> k2 >> s.bytes_written >> k3 >> s.blocked) || k1 != "writes" ||
        k2 != "bytes_written" || k3 != "blocked")
        throw std::runtime_error("unexpected " + file + ": " + std::string(buf, static_cast<std::size_t>(n)));
    std::string k4, k5;
    if (in >> k4) {  // a read_gate mount's two more lines
        if (!(in >> s.reads >> k5 >> s.read_blocked) || k4 != "reads" || k5 != "read_blocked")
            throw std::runtime_error("unexpected " + file + ": " + std::string(buf, static_cast<std::size_t>(n)));
    }
    return s;
}

unsigned SlowFs::blocked_writes() const { return stats().blocked; }
std::uint64_t SlowFs::writes() const { return stats().writes; }
std::uint64_t SlowFs::bytes_written() const { return stats().bytes_written; }

bool SlowFs::wait_blocked(unsigned n, std::chrono::milliseconds timeout) const
{
    const auto deadline = Clock::now() + timeout;
    while (blocked_writes() < n) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

std::string SlowFs::log() const
{
    std::ifstream in(m_log);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

}  // namespace pagerd::test
