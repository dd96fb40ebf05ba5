// Adapted from tests/integration/cgroup.cpp (see cgroup.hpp).
#include "cgroup.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

namespace pagerd::bench {
namespace {

// A memory-controller hierarchy: where it is mounted and the cgroup this process is in.
struct Hierarchy {
    int version = 0;
    std::string mount;  // e.g. /sys/fs/cgroup/memory (v1), /sys/fs/cgroup (v2)
    std::string self;   // this process's cgroup, relative to the mount: "/" or "/a/b"
};

bool is_dir(const std::string& path)
{
    struct stat st{};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

bool read_text(const std::string& path, std::string& out)
{
    std::ifstream in(path);
    if (!in) return false;
    std::ostringstream s;
    s << in.rdbuf();
    out = s.str();
    return true;
}

// One write(2) of `value`, as the cgroup files want it. Returns "" or the error.
std::string write_text(const std::string& path, const std::string& value)
{
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return "open " + path + ": " + std::strerror(errno);
    const ssize_t n = ::write(fd, value.data(), value.size());
    const int err = errno;
    ::close(fd);
    if (n != static_cast<ssize_t>(value.size()))
        return "write '" + value + "' to " + path + ": " + (n < 0 ? std::strerror(err) : "short write");
    return {};
}

// Whether `word` is one of the items of `text`: separated by `sep`, or (sep ' ') by any
// whitespace, as in cgroup.controllers and cgroup.subtree_control.
bool has_word(const std::string& text, const std::string& word, char sep = ' ')
{
    std::istringstream in(text);
    std::string w;
    if (sep == ' ') {
        while (in >> w)
            if (w == word) return true;
        return false;
    }
    while (std::getline(in, w, sep)) {
        while (!w.empty() && std::isspace(static_cast<unsigned char>(w.back()))) w.pop_back();
        if (w == word) return true;
    }
    return false;
}

// A number file: "123\n" (or "max" in v2: the largest value). 0 if absent or unreadable.
std::uint64_t read_number(const std::string& path)
{
    std::string s;
    if (!read_text(path, s)) return 0;
    if (s.rfind("max", 0) == 0) return std::numeric_limits<std::uint64_t>::max();
    try {
        return std::stoull(s);
    } catch (...) {
        return 0;
    }
}

// The value of line "key N" of a flat keyed file (memory.events, memory.oom_control).
std::uint64_t read_key(const std::string& path, const std::string& key)
{
    std::ifstream in(path);
    std::string k;
    std::uint64_t v = 0;
    while (in >> k >> v)
        if (k == key) return v;
    return 0;
}

// Undoes mountinfo's octal escapes (\040 for a space, ...).
std::string unescape(const std::string& s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
            out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}

// This process's cgroup in the v1 hierarchy that has `controller`, or in v2 (controller
// ""), from /proc/self/cgroup; "/" when not found.
std::string self_cgroup(const std::string& controller)
{
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line)) {
        const auto a = line.find(':');
        const auto b = a == std::string::npos ? a : line.find(':', a + 1);
        if (b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1);
        const std::string path = line.substr(b + 1);
        if (controller.empty() ? (line.substr(0, a) == "0" && controllers.empty()) : has_word(controllers, controller, ','))
            return path.empty() ? "/" : path;
    }
    return "/";
}

// Finds the memory controller: a v1 "memory" hierarchy first (when it is bound to v1 it
// is not in v2), else the v2 hierarchy if it offers "memory".
bool find_hierarchy(Hierarchy& h, std::string& reason)
{
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    std::string v2_mount;
    while (std::getline(in, line)) {
        const auto dash = line.find(" - ");
        if (dash == std::string::npos) continue;
        std::istringstream pre(line.substr(0, dash));
        std::string id, parent, dev, root, mount_point;
        pre >> id >> parent >> dev >> root >> mount_point;
        std::istringstream post(line.substr(dash + 3));
        std::string fstype, source, super;
        post >> fstype >> source >> super;
        if (fstype == "cgroup" && has_word(super, "memory", ',')) {
            h = {1, unescape(mount_point), self_cgroup("memory")};
            return true;
        }
        if (fstype == "cgroup2" && v2_mount.empty()) {
            std::string controllers;
            if (read_text(unescape(mount_point) + "/cgroup.controllers", controllers) && has_word(controllers, "memory"))
                v2_mount = unescape(mount_point);
        }
    }
    if (!v2_mount.empty()) {
        h = {2, v2_mount, self_cgroup("")};
        return true;
    }
    // Without /proc/self/mountinfo: the usual places.
    if (exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")) {
        h = {1, "/sys/fs/cgroup/memory", self_cgroup("memory")};
        return true;
    }
    std::string controllers;
    if (read_text("/sys/fs/cgroup/cgroup.controllers", controllers) && has_word(controllers, "memory")) {
        h = {2, "/sys/fs/cgroup", self_cgroup("")};
        return true;
    }
    reason = "no memory cgroup controller: neither a cgroup v1 \"memory\" hierarchy nor a cgroup v2 "
             "hierarchy with \"memory\" in cgroup.controllers is mounted";
    return false;
}

std::string unique_name()
{
    static std::atomic<unsigned> counter{0};
    const auto ns = std::chrono::steady_clock::now().time_since_epoch().count();
    std::ostringstream s;
    s << "pagerd-bench-" << ::getpid() << '-' << counter++ << '-' << std::hex << (static_cast<std::uint64_t>(ns) & 0xffffff);
    return s.str();
}

std::string dirname_of(const std::string& path)
{
    const auto slash = path.find_last_of('/');
    return slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
}

}  // namespace

MemoryCgroup::MemoryCgroup(std::uint64_t limit_bytes)
{
    try {
        Hierarchy h;
        if (!find_hierarchy(h, m_error)) return;
        const std::string self = h.self == "/" ? h.mount : h.mount + h.self;
        m_home = is_dir(self) ? self : h.mount;

        // Where to create it: v1 anywhere; v2 where the memory controller is (or can be)
        // enabled for children: the own cgroup if it may, else the nearest ancestor (a
        // non-root cgroup with processes cannot enable controllers for children).
        std::vector<std::string> candidates{m_home};
        if (h.version == 2)
            for (std::string d = m_home; d.size() > h.mount.size();) candidates.push_back(d = dirname_of(d));
        if (candidates.back() != h.mount) candidates.push_back(h.mount);

        std::string why;
        for (const auto& dir : candidates) {
            if (h.version == 2) {
                std::string sub;
                read_text(dir + "/cgroup.subtree_control", sub);
                if (!has_word(sub, "memory")) {
                    const std::string e = write_text(dir + "/cgroup.subtree_control", "+memory");
                    if (!e.empty()) {
                        why += (why.empty() ? "" : "; ") + e;
                        continue;
                    }
                }
            }
            const std::string name = unique_name();
            const std::string path = dir + "/" + name;
            if (::mkdir(path.c_str(), 0755) != 0) {
                why += (why.empty() ? "" : "; ") + std::string("mkdir ") + path + ": " + std::strerror(errno);
                continue;
            }
            m_parent = dir;
            m_path = path;
            break;
        }
        if (m_path.empty()) {
            m_error = "cannot create a memory cgroup (cgroup v" + std::to_string(h.version) + "): " + why;
            return;
        }
        m_version = h.version;

        const std::string limit = std::to_string(limit_bytes);
        std::string e;
        if (m_version == 1) {
            e = write_text(m_path + "/memory.limit_in_bytes", limit);
            // After limit_in_bytes: memsw must never be below it.
            if (e.empty() && exists(m_path + "/memory.memsw.limit_in_bytes"))
                e = write_text(m_path + "/memory.memsw.limit_in_bytes", limit);
            if (e.empty()) e = write_text(m_path + "/memory.swappiness", "0");
        } else {
            e = write_text(m_path + "/memory.max", limit);
            if (e.empty() && exists(m_path + "/memory.swap.max")) e = write_text(m_path + "/memory.swap.max", "0");
        }
        if (!e.empty()) {
            m_error = "configure " + m_path + ": " + e;
            ::rmdir(m_path.c_str());
            m_path.clear();
            return;
        }
        m_ok = true;
    } catch (const std::exception& ex) {
        m_error = std::string("MemoryCgroup: ") + ex.what();
    }
}

MemoryCgroup::~MemoryCgroup()
{
    if (m_path.empty()) return;
    try {
        // Killed processes take a moment to leave (their memory is freed first).
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (;;) {
            for (const pid_t pid : procs()) {
                const std::string p = std::to_string(pid);
                if (write_text(m_parent + "/cgroup.procs", p).empty()) continue;
                if (m_home != m_parent && write_text(m_home + "/cgroup.procs", p).empty()) continue;
                ::kill(pid, SIGKILL);
            }
            if (::rmdir(m_path.c_str()) == 0 || errno == ENOENT) return;
            if (std::chrono::steady_clock::now() > deadline) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    } catch (...) {
    }
}

std::vector<pid_t> MemoryCgroup::procs() const
{
    std::vector<pid_t> out;
    if (m_path.empty()) return out;
    std::ifstream in(m_path + "/cgroup.procs");
    long pid = 0;
    while (in >> pid) out.push_back(static_cast<pid_t>(pid));
    return out;
}

std::uint64_t MemoryCgroup::peak() const
{
    if (m_path.empty()) return 0;
    return read_number(m_path + (m_version == 1 ? "/memory.max_usage_in_bytes" : "/memory.peak"));
}

std::uint64_t MemoryCgroup::oom_kills() const
{
    if (m_path.empty()) return 0;
    return read_key(m_path + (m_version == 1 ? "/memory.oom_control" : "/memory.events"), "oom_kill");
}

}  // namespace pagerd::bench
