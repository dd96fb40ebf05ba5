// --cases cache: the daemon's page cache (daemon/cache.hpp) against the kernel's page cache,
// each case with a target ratio. Every reading process is pagerd-bench itself, run anew
// (fork + exec of /proc/self/exe with --cache-child) so that it can be put into a memory
// cgroup before it allocates anything and never inherits this process's threads or its
// connection. It maps, says "ready", waits for "go", touches, reports its times and
// counters, then holds its mapping until told to end (case 4's first reader keeps the
// file mapped while the second reads).
//
// Each case starts a pagerd of its own with the --memory-max it needs, one at a time
// (Daemon keeps one daemon for the emergency cleanup), stopped once the case is done.
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <thread>
#include <unordered_set>

#include "bench.hpp"
#include "integration/cgroup.hpp"

namespace pagerd::bench {
namespace {

using test::MemoryCgroup;

using Clock = std::chrono::steady_clock;

constexpr std::uint64_t k_mib = 1ull << 20;
constexpr std::uint64_t k_small_budget = 256 * k_mib;  // --memory-max of cases 1 and 2
constexpr std::uint64_t k_cgroup_limit = 256 * k_mib;  // the readers' memory cgroup, cases 1 and 2
constexpr std::uint64_t k_big_budget = 1536 * k_mib;   // --memory-max of cases 3 to 5
constexpr unsigned k_readers = 4;                      // case 3
constexpr double k_zipf_theta = 0.99;                  // case 2
constexpr std::uint64_t k_zipf_seed = 0x21bf5eed0099ull;
constexpr std::uint64_t k_direct_block = 1 * k_mib;    // case 5: O_DIRECT reads, 32 in flight
constexpr unsigned k_direct_depth = 32;
constexpr std::uint64_t k_pread_block = 1 * k_mib;     // case 5: pread loop
constexpr int k_child_timeout_ms = 300000;             // a reader that takes longer fails its case
constexpr int k_thrash_cap_ms = 30000;                 // x1: plain mmap in the cgroup, stopped after this

// The byte touch() reads in page p (touch.cpp): the pread and O_DIRECT baselines sum the
// same bytes, so every side's checksum can be compared.
std::uint64_t touch_offset(std::uint32_t p) { return std::uint64_t{p} * k_page + (p * 97u) % k_page; }

std::int64_t now_ns()
{
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

std::string mib(double bytes) { return fmt(bytes / static_cast<double>(k_mib)) + " MiB"; }
std::string pct(double f) { return fmt(f * 100) + " %"; }

std::uint64_t splitmix64(std::uint64_t& state)
{
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// `count` reads of pages below `pages`: page rank k (1-based) is drawn with probability
// proportional to 1 / k^theta, and the ranks are scattered over the file by a fixed
// permutation (hot pages are not next to each other, as the keys of a real table are not).
// Fixed seed: the same list every run and in every process.
std::vector<std::uint32_t> zipf_pages(std::uint64_t pages, std::uint64_t count, double theta)
{
    std::vector<double> cdf(pages);
    double sum = 0;
    for (std::uint64_t k = 0; k < pages; ++k) cdf[k] = sum += 1.0 / std::pow(static_cast<double>(k + 1), theta);
    std::uint64_t state = k_zipf_seed;
    std::vector<std::uint32_t> perm(pages);
    std::iota(perm.begin(), perm.end(), 0u);
    for (std::uint64_t i = pages; i > 1; --i) std::swap(perm[i - 1], perm[splitmix64(state) % i]);
    std::vector<std::uint32_t> v;
    v.reserve(count);
    for (std::uint64_t i = 0; i < count; ++i) {
        const double u = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53 * sum;
        const auto k = static_cast<std::uint64_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
        v.push_back(perm[std::min(k, pages - 1)]);
    }
    return v;
}

// A field of /proc/<pid>/io ("read_bytes"); -1 if unknown.
long long proc_io(pid_t pid, const char* field)
{
    std::ifstream in(pid > 0 ? "/proc/" + std::to_string(pid) + "/io" : std::string("/proc/self/io"));
    const std::string want = std::string(field) + ":";
    for (std::string line; std::getline(in, line);)
        if (line.compare(0, want.size(), want) == 0) return std::atoll(line.c_str() + want.size());
    return -1;
}

bool write_all(int fd, const std::string& s)
{
    std::size_t done = 0;
    while (done < s.size()) {
        const ssize_t w = ::write(fd, s.data() + done, s.size() - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        done += static_cast<std::size_t>(w);
    }
    return true;
}

std::string describe_status(int status)
{
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

// ---- the reading process (pagerd-bench --cache-child) ---------------------------------

// Compares up to 64 of the touched pages with pread of the file; empty if equal.
std::string verify_sample(const void* addr, int fd, const std::vector<std::uint32_t>& pages)
{
    const auto* base = static_cast<const unsigned char*>(addr);
    const std::size_t samples = std::min<std::size_t>(64, pages.size());
    std::vector<unsigned char> buf(k_page);
    for (std::size_t s = 0; s < samples; ++s) {
        const std::uint32_t p = pages[s * pages.size() / samples];
        if (::pread(fd, buf.data(), k_page, static_cast<off_t>(std::uint64_t{p} * k_page)) != static_cast<ssize_t>(k_page))
            return "pread of page " + std::to_string(p) + " failed";
        if (std::memcmp(base + std::uint64_t{p} * k_page, buf.data(), k_page) != 0)
            return "page " + std::to_string(p) + " differs from the file";
    }
    return {};
}

}  // namespace

int cache_child_main(int argc, char** argv)
{
    std::map<std::string, std::string> a;
    for (int i = 2; i < argc; ++i) {
        const std::string kv = argv[i];
        const std::size_t eq = kv.find('=');
        if (eq != std::string::npos) a[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    auto num = [&a](const char* k) { return a.count(k) ? std::strtoull(a[k].c_str(), nullptr, 10) : 0ull; };
    const int out = a.count("out") ? static_cast<int>(num("out")) : STDOUT_FILENO;
    const int gate = static_cast<int>(num("gate"));
    const int fd = static_cast<int>(num("fd"));
    const std::uint64_t bytes = num("bytes");
    const std::string mode = a["mode"], pattern = a["pattern"];
    auto say = [out](const std::string& line) { return write_all(out, line + "\n"); };
    auto fail = [&say](const std::string& why) {
        say("error " + why);
        return 1;
    };
    if (bytes == 0 || bytes % k_page) return fail("bad bytes=");
    ::unsetenv("PAGERD_CACHE");  // the pagerd readers use the daemon's cache, whatever our caller set

    const std::uint64_t npages = bytes / k_page;
    std::vector<std::uint32_t> pages;
    if (pattern == "seq")
        pages = sequential_pages(npages);
    else if (pattern == "zipf")
        pages = zipf_pages(npages, num("count"), k_zipf_theta);
    else if (pattern == "rand")
        pages = random_pages(npages, num("count"));
    else
        return fail("bad pattern=" + pattern);

    const void* addr = nullptr;
    void* mapped = nullptr;
    std::unique_ptr<libclient::Connection> conn;
    libclient::Region region;
    if (mode == "mmap" || mode == "mmap-random" || mode == "mmap-sequential") {
        mapped = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        if (mapped == MAP_FAILED) return fail(std::string("mmap: ") + std::strerror(errno));
        const int advice = mode == "mmap-random" ? MADV_RANDOM : mode == "mmap-sequential" ? MADV_SEQUENTIAL : MADV_NORMAL;
        if (advice != MADV_NORMAL && ::madvise(mapped, bytes, advice) != 0)
            return fail(std::string("madvise: ") + std::strerror(errno));
        addr = mapped;
    } else if (mode == "pagerd") {
        auto c = libclient::Connection::connect({a["socket"], "pagerd-bench cache reader"});
        if (!c) return fail("connect: " + c.error().message);
        conn = std::move(c.value());
        libclient::MapOptions mo{0, bytes, libclient::Access::ReadOnly};
        if (a.count("prefetch")) {
            const auto p = libclient::parse_prefetch(a["prefetch"]);
            if (!p) return fail("bad prefetch=");
            mo.prefetch = *p;
        }
        auto r = conn->map_fd(fd, mo);
        if (!r) return fail("map_fd: " + r.error().message);
        region = r.value();
        addr = region.addr;
    } else {
        return fail("bad mode=" + mode);
    }
    if (!say("ready")) return 1;
    char c = 0;
    if (::read(gate, &c, 1) != 1) return 0;  // not wanted after all

    rusage r0{}, r1{};
    ::getrusage(RUSAGE_SELF, &r0);
    const long long io0 = proc_io(0, "read_bytes");
    const std::int64_t t0 = now_ns();
    const Measure m = touch(addr, pages, 1);
    const std::int64_t t1 = now_ns();
    const long long io1 = proc_io(0, "read_bytes");
    ::getrusage(RUSAGE_SELF, &r1);
    if (mode == "pagerd")
        if (const std::string bad = verify_sample(addr, fd, pages); !bad.empty()) return fail("through pagerd, " + bad);
    char line[256];
    std::snprintf(line, sizeof line, "done %lld %lld %.9f %llu %ld %ld %lld", static_cast<long long>(t0),
                  static_cast<long long>(t1), m.seconds, static_cast<unsigned long long>(m.checksum),
                  r1.ru_majflt - r0.ru_majflt, r1.ru_minflt - r0.ru_minflt, io0 >= 0 && io1 >= 0 ? io1 - io0 : -1);
    if (!say(line)) return 1;
    for (;;) {  // hold the mapping until the parent closes the gate
        const ssize_t r = ::read(gate, &c, 1);
        if (r == 0 || (r < 0 && errno != EINTR)) break;
    }
    if (conn) {
        [[maybe_unused]] auto u = conn->unmap(region);
    }
    if (mapped) ::munmap(mapped, bytes);
    return 0;
}

namespace {

// ---- the parent's side of a reading process --------------------------------------------

struct ChildDone {
    std::int64_t t0 = 0, t1 = 0;  // CLOCK_MONOTONIC around the touches
    double seconds = 0;           // touch()'s own clock
    std::uint64_t checksum = 0;
    long majflt = 0, minflt = 0;
    long long read_bytes = -1;  // storage reads of the process over the touches (/proc/self/io)
};

class Child {
public:
    // `args`: key=value for cache_child_main; fd= gate= out= are added.
    static Result<std::unique_ptr<Child>> start(std::vector<std::string> args, int file_fd, const MemoryCgroup* cg)
    {
        std::unique_ptr<Child> ch(new Child);
        int gate[2], out[2];
        if (::pipe2(gate, O_CLOEXEC) != 0) return Error::system(errno, std::string("pipe2: ") + std::strerror(errno));
        ch->m_gate.reset(gate[1]);
        util::UniqueFd gate_r(gate[0]);
        if (::pipe2(out, O_CLOEXEC) != 0) return Error::system(errno, std::string("pipe2: ") + std::strerror(errno));
        ch->m_out.reset(out[0]);
        util::UniqueFd out_w(out[1]);

        // Everything the child needs is made before the fork: it only makes system calls.
        char exe[4096];
        const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) return Error::system(errno, std::string("readlink /proc/self/exe: ") + std::strerror(errno));
        exe[n] = '\0';
        args.insert(args.begin(), {exe, k_cache_child_flag, "fd=" + std::to_string(file_fd),
                                   "gate=" + std::to_string(gate_r.get()), "out=" + std::to_string(out_w.get())});
        std::vector<char*> argv;
        for (auto& s : args) argv.push_back(s.data());
        argv.push_back(nullptr);
        const std::string procs = cg ? cg->path() + "/cgroup.procs" : std::string();
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) return Error::system(errno, std::string("fork: ") + std::strerror(errno));
        if (pid == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            if (!procs.empty()) {  // into the cgroup before anything is allocated
                const int f = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
                if (f < 0 || ::write(f, "0", 1) != 1) ::_exit(126);
                ::close(f);
            }
            ::fcntl(file_fd, F_SETFD, 0);
            ::fcntl(gate_r.get(), F_SETFD, 0);
            ::fcntl(out_w.get(), F_SETFD, 0);
            ::dup2(STDERR_FILENO, STDOUT_FILENO);  // keep stdout free for --json
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        ch->m_pid = pid;
        return ch;
    }

    ~Child()
    {
        m_gate.reset();
        if (m_pid > 0) {
            if (!reap(5000)) {
                ::kill(m_pid, SIGKILL);
                ::waitpid(m_pid, nullptr, 0);
            }
        }
    }

    pid_t pid() const { return m_pid; }

    Result<void> wait_ready(int timeout_ms = k_child_timeout_ms)
    {
        auto line = read_line(timeout_ms, {});
        if (!line) return line.error();
        if (line.value() != "ready") return Error::system(EPROTO, "reader said \"" + line.value() + "\"");
        return {};
    }

    Result<void> go()
    {
        if (!write_all(m_gate.get(), "g")) return Error::system(errno, std::string("telling the reader to start: ") + std::strerror(errno));
        return {};
    }

    // Waits for the reader's figures, calling `tick` about every 20 ms meanwhile.
    Result<ChildDone> wait_done(const std::function<void()>& tick = {}, int timeout_ms = k_child_timeout_ms)
    {
        auto line = read_line(timeout_ms, tick);
        if (!line) return line.error();
        ChildDone d;
        long long t0 = 0, t1 = 0, rb = -1;
        unsigned long long sum = 0;
        if (std::sscanf(line.value().c_str(), "done %lld %lld %lf %llu %ld %ld %lld", &t0, &t1, &d.seconds, &sum,
                        &d.majflt, &d.minflt, &rb) != 7)
            return Error::system(EPROTO, "reader said \"" + line.value() + "\"");
        d.t0 = t0;
        d.t1 = t1;
        d.checksum = sum;
        d.read_bytes = rb;
        return d;
    }

    // Tells the reader to unmap and end; it must exit with status 0.
    Result<void> finish()
    {
        m_gate.reset();
        int status = 0;
        if (!reap(30000, &status)) return Error::system(ETIMEDOUT, "the reader did not end within 30 s of being told to");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return Error::system(ECHILD, "the reader " + describe_status(status));
        return {};
    }

private:
    Child() = default;

    bool reap(int timeout_ms, int* status = nullptr)
    {
        const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        int st = 0;
        for (;;) {
            const pid_t r = ::waitpid(m_pid, &st, WNOHANG);
            if (r == m_pid || (r < 0 && errno == ECHILD)) {
                m_pid = -1;
                if (status) *status = st;
                return true;
            }
            if (Clock::now() > deadline) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }

    Result<std::string> read_line(int timeout_ms, const std::function<void()>& tick)
    {
        const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            if (const std::size_t nl = m_buf.find('\n'); nl != std::string::npos) {
                std::string line = m_buf.substr(0, nl);
                m_buf.erase(0, nl + 1);
                if (line.rfind("error ", 0) == 0) return Error::system(EIO, "reader: " + line.substr(6));
                return line;
            }
            if (Clock::now() > deadline) {
                ::kill(m_pid, SIGKILL);
                return Error::system(ETIMEDOUT, "the reader did not answer within " + std::to_string(timeout_ms / 1000) +
                                                    " s (killed)");
            }
            pollfd p{m_out.get(), POLLIN, 0};
            const int r = ::poll(&p, 1, 20);
            if (r < 0 && errno != EINTR) return Error::system(errno, std::string("poll: ") + std::strerror(errno));
            if (r > 0) {
                char buf[512];
                const ssize_t n = ::read(m_out.get(), buf, sizeof buf);
                if (n > 0) {
                    m_buf.append(buf, static_cast<std::size_t>(n));
                    continue;
                }
                if (n == 0) {  // it ended without a word
                    int st = 0;
                    const std::string how = reap(5000, &st) ? describe_status(st) : "closed its pipe";
                    return Error::system(ECHILD, "the reader " + how +
                                                     (WIFEXITED(st) && WEXITSTATUS(st) == 126
                                                          ? " (it could not join its memory cgroup)"
                                                          : ""));
                }
            }
            if (tick) tick();
        }
    }

    pid_t m_pid = -1;
    util::UniqueFd m_gate, m_out;
    std::string m_buf;
};

// A pagerd for one case, with its own --memory-max, and a connection for its status.
struct CaseDaemon {
    std::unique_ptr<Daemon> daemon;
    std::unique_ptr<libclient::Connection> conn;
    std::string description;
};

Result<CaseDaemon> start_daemon(const CacheSetup& s, std::uint64_t budget)
{
    std::vector<std::string> args = s.daemon_args;
    args.push_back("--memory-max");
    args.push_back(std::to_string(budget));
    auto d = Daemon::start(s.pagerd, args);
    if (!d) return d.error();
    CaseDaemon cd;
    cd.daemon = std::move(d.value());
    auto conn = connect_with_retry(cd.daemon->socket(), 5000, cd.daemon.get());
    if (!conn) return conn.error();
    cd.conn = std::move(conn.value());
    std::string a;
    for (const auto& x : args) a += " " + x;
    cd.description = cd.daemon->exe() + a;
    if (auto st = cd.conn->status(); st && st->cache_budget == 0)
        return Error::system(ENOTSUP, "pagerd reports no page cache (cache_budget 0)");
    return cd;
}

// The daemon's cache is empty (no region maps the file any more), waiting up to 3 s for
// readers that just ended. Otherwise an error saying what it still holds.
Result<libclient::Status> cache_empty(libclient::Connection& conn)
{
    const auto deadline = Clock::now() + std::chrono::seconds(3);
    for (;;) {
        auto st = conn.status();
        if (!st) return st.error();
        if (st->cache_bytes == 0 && st->cache_files == 0) return st;
        if (Clock::now() > deadline)
            return Error::system(EBUSY, "the daemon's cache still holds " + mib(static_cast<double>(st->cache_bytes)) +
                                            " in " + std::to_string(st->cache_files) + " file(s) with no reader left");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// What a group of readers did.
struct Side {
    bool capped = false;  // stopped after SideSpec::cap_ms: wall is the cap, no figures
    std::vector<ChildDone> done;
    double wall = 0;  // first start to last end of the touches
    std::uint64_t checksum = 0;
    std::uint64_t cgroup_peak = 0, oom_kills = 0;
    bool have_status = false;
    libclient::Status st0, st1;  // just before go, just after the last reader finished
    std::uint64_t peak_cache_bytes = 0;
    long long daemon_read_bytes = -1;
    double daemon_cpu = -1;        // utime+stime of the daemon from go to the last reader's end
    double kernel_resident = -1;   // share of the file in the kernel's page cache after the readers
    long majflt = 0;
    long long read_bytes = -1;  // of the readers together
};

struct SideSpec {
    std::vector<std::string> args;  // of every reader
    unsigned readers = 1;
    bool cgroup = false;            // in a new memory cgroup of k_cgroup_limit (all readers in one)
    libclient::Connection* status = nullptr;  // sample this daemon's status
    pid_t daemon_pid = -1;
    int cap_ms = 0;  // > 0: a reader still reading after this long is killed and the side capped
};

Result<Side> run_side(const CacheSetup& s, const SideSpec& spec)
{
    std::unique_ptr<MemoryCgroup> cg;
    if (spec.cgroup) {
        cg = std::make_unique<MemoryCgroup>(k_cgroup_limit);
        if (!cg->ok()) return Error::system(EPERM, "memory cgroup: " + cg->error());
    }
    std::vector<std::unique_ptr<Child>> kids;
    for (unsigned i = 0; i < spec.readers; ++i) {
        auto c = Child::start(spec.args, s.fd, cg.get());
        if (!c) return c.error();
        kids.push_back(std::move(c.value()));
    }
    for (auto& k : kids)
        if (auto r = k->wait_ready(); !r) return r.error();
    Side side;
    auto sample = [&] {
        if (!spec.status) return;
        if (auto st = spec.status->status()) side.peak_cache_bytes = std::max(side.peak_cache_bytes, st->cache_bytes);
    };
    if (spec.status) {
        auto st = spec.status->status();
        if (!st) return st.error();
        side.st0 = st.value();
    }
    const long long dio0 = spec.daemon_pid > 0 ? proc_io(spec.daemon_pid, "read_bytes") : -1;
    const double cpu0 = spec.daemon_pid > 0 ? process_cpu_seconds(spec.daemon_pid) : -1;
    for (auto& k : kids)
        if (auto r = k->go(); !r) return r.error();
    const auto started = Clock::now();
    for (auto& k : kids) {
        int timeout = k_child_timeout_ms;
        if (spec.cap_ms > 0)
            timeout = std::max(1, spec.cap_ms - static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                                      Clock::now() - started).count()));
        auto d = k->wait_done(sample, timeout);
        if (!d && spec.cap_ms > 0 && d.error().is_errno(ETIMEDOUT)) {
            side.capped = true;
            side.wall = spec.cap_ms / 1000.0;
            if (cg) {
                side.cgroup_peak = cg->peak();
                side.oom_kills = cg->oom_kills();
            }
            return side;  // the readers are killed by ~Child
        }
        if (!d) return d.error();
        side.done.push_back(d.value());
    }
    sample();
    if (spec.status) {
        auto st = spec.status->status();
        if (!st) return st.error();
        side.st1 = st.value();
        side.have_status = true;
    }
    const long long dio1 = dio0 >= 0 ? proc_io(spec.daemon_pid, "read_bytes") : -1;
    if (dio0 >= 0 && dio1 >= 0) side.daemon_read_bytes = dio1 - dio0;
    const double cpu1 = cpu0 >= 0 ? process_cpu_seconds(spec.daemon_pid) : -1;
    if (cpu0 >= 0 && cpu1 >= 0) side.daemon_cpu = cpu1 - cpu0;
    side.kernel_resident = resident_fraction(s.fd, s.bytes);
    std::int64_t first = side.done[0].t0, last = side.done[0].t1;
    side.read_bytes = 0;
    for (const auto& d : side.done) {
        first = std::min(first, d.t0);
        last = std::max(last, d.t1);
        side.majflt += d.majflt;
        side.read_bytes = d.read_bytes >= 0 && side.read_bytes >= 0 ? side.read_bytes + d.read_bytes : -1;
        if (d.checksum != side.done[0].checksum)
            return Error::system(EBADMSG, "two readers of the same pages summed different bytes");
    }
    side.checksum = side.done[0].checksum;
    side.wall = spec.readers == 1 ? side.done[0].seconds : static_cast<double>(last - first) / 1e9;
    for (auto& k : kids)
        if (auto r = k->finish(); !r) return r.error();
    if (cg) {
        side.cgroup_peak = cg->peak();
        side.oom_kills = cg->oom_kills();
    }
    return side;
}

double gbps_of(double seconds, std::uint64_t pages, unsigned procs)
{
    return seconds > 0 ? static_cast<double>(pages * k_page) * procs / seconds / 1e9 : -1;
}

std::vector<std::string> reader_args(const std::string& mode, const CacheSetup& s, const std::string& pattern,
                                     std::uint64_t count = 0, const std::string& socket = {})
{
    std::vector<std::string> a = {"mode=" + mode, "bytes=" + std::to_string(s.bytes), "pattern=" + pattern};
    if (count) a.push_back("count=" + std::to_string(count));
    if (!socket.empty()) a.push_back("socket=" + socket);
    return a;
}

struct CacheDelta {
    std::uint64_t loads = 0, hits = 0, evictions = 0, refaults = 0, faults = 0;
};
CacheDelta delta(const libclient::Status& a, const libclient::Status& b)
{
    return {b.cache_loads - a.cache_loads, b.cache_hits - a.cache_hits, b.cache_evictions - a.cache_evictions,
            b.cache_refaults - a.cache_refaults, b.faults - a.faults};
}

// Notes and figures of a pagerd side and its baseline that every case shows.
void describe_sides(CacheCase& c, const Side& base, const Side& pd)
{
    const CacheDelta d = delta(pd.st0, pd.st1);
    const double hit_ratio = d.hits + d.loads ? static_cast<double>(d.hits) / static_cast<double>(d.hits + d.loads) : -1;
    c.notes.push_back("pagerd: cache loads " + std::to_string(d.loads) + " pages, hits " + std::to_string(d.hits) +
                      " (hit ratio hits/(hits+loads) " + (hit_ratio >= 0 ? pct(hit_ratio) : "-") + "), evictions " +
                      std::to_string(d.evictions) + ", refaults " + std::to_string(d.refaults) + ", faults served " +
                      std::to_string(d.faults) + ", cache peak " + mib(static_cast<double>(pd.peak_cache_bytes)) +
                      (pd.daemon_read_bytes >= 0 ? ", daemon read " + mib(static_cast<double>(pd.daemon_read_bytes)) +
                                                       " from the disk"
                                                 : "") +
                      (pd.daemon_cpu >= 0 ? ", daemon CPU " + fmt(pd.daemon_cpu) + " s" : "") +
                      (pd.kernel_resident >= 0 ? "; the file in the kernel's page cache after: " + pct(pd.kernel_resident)
                                               : ""));
    c.figures.insert(c.figures.end(), {{"pagerd_cache_loads", static_cast<double>(d.loads)},
                                       {"pagerd_cache_hits", static_cast<double>(d.hits)},
                                       {"pagerd_hit_ratio", hit_ratio},
                                       {"pagerd_cache_evictions", static_cast<double>(d.evictions)},
                                       {"pagerd_cache_refaults", static_cast<double>(d.refaults)},
                                       {"pagerd_faults", static_cast<double>(d.faults)},
                                       {"pagerd_cache_peak_bytes", static_cast<double>(pd.peak_cache_bytes)},
                                       {"pagerd_daemon_read_bytes", static_cast<double>(pd.daemon_read_bytes)},
                                       {"pagerd_daemon_cpu_seconds", pd.daemon_cpu},
                                       {"pagerd_kernel_page_cache_fraction_after", pd.kernel_resident},
                                       {"baseline_kernel_page_cache_fraction_after", base.kernel_resident},
                                       {"baseline_seconds", base.wall},
                                       {"pagerd_seconds", pd.wall},
                                       {"baseline_major_faults", static_cast<double>(base.majflt)},
                                       {"baseline_read_bytes", static_cast<double>(base.read_bytes)}});
    c.notes.push_back("kernel: major faults " + std::to_string(base.majflt) +
                      (base.read_bytes >= 0 ? ", readers read " + mib(static_cast<double>(base.read_bytes)) + " from the disk"
                                            : ""));
    if (base.cgroup_peak || pd.cgroup_peak) {
        c.notes.push_back("readers' cgroup (limit " + mib(static_cast<double>(k_cgroup_limit)) + ") peak charge: kernel " +
                          mib(static_cast<double>(base.cgroup_peak)) + ", pagerd " +
                          mib(static_cast<double>(pd.cgroup_peak)) + "; OOM kills " +
                          std::to_string(base.oom_kills + pd.oom_kills));
        c.figures.insert(c.figures.end(), {{"baseline_cgroup_peak_bytes", static_cast<double>(base.cgroup_peak)},
                                           {"pagerd_cgroup_peak_bytes", static_cast<double>(pd.cgroup_peak)},
                                           {"oom_kills", static_cast<double>(base.oom_kills + pd.oom_kills)}});
    }
}

// ---- case 5's kernel paths, in this process -------------------------------------------

Result<Measure> measure_pread(int fd, std::uint64_t bytes)
{
    std::vector<unsigned char> buf(k_pread_block);
    Measure m;
    const auto t0 = Clock::now();
    for (std::uint64_t off = 0; off < bytes;) {
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(k_pread_block, bytes - off));
        const ssize_t r = ::pread(fd, buf.data(), want, static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return Error::system(r < 0 ? errno : EIO, "pread at " + std::to_string(off) + " failed");
        const std::uint64_t got = static_cast<std::uint64_t>(r) / k_page * k_page;
        for (std::uint64_t p = off / k_page; p < (off + got) / k_page; ++p)
            m.checksum += buf[touch_offset(static_cast<std::uint32_t>(p)) - off];
        off += got ? got : static_cast<std::uint64_t>(r);
    }
    m.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return m;
}

// O_DIRECT reads of k_direct_block, k_direct_depth of them in flight, through io_uring.
Result<Measure> measure_direct(int fd, std::uint64_t bytes)
{
    util::UniqueFd dfd(::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    if (!dfd) return Error::system(errno, std::string("reopening the file with O_DIRECT: ") + std::strerror(errno));
    io_uring ring{};
    if (const int e = ::io_uring_queue_init(k_direct_depth, &ring, 0); e < 0)
        return Error::system(-e, std::string("io_uring_queue_init: ") + std::strerror(-e));
    struct Slot {
        unsigned char* buf = nullptr;
        std::uint64_t off = 0, done = 0, len = 0;
    };
    std::vector<Slot> slots(k_direct_depth);
    Result<Measure> result = Measure{};
    for (auto& s : slots)
        if (::posix_memalign(reinterpret_cast<void**>(&s.buf), 4096, k_direct_block) != 0) s.buf = nullptr;
    std::uint64_t next = 0, finished = 0;
    unsigned inflight = 0;
    auto submit = [&](std::size_t i) {
        Slot& s = slots[i];
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring);
        ::io_uring_prep_read(sqe, dfd.get(), s.buf + s.done, static_cast<unsigned>(s.len - s.done), s.off + s.done);
        ::io_uring_sqe_set_data64(sqe, i);
    };
    auto start_next = [&](std::size_t i) {
        if (next >= bytes) return false;
        slots[i].off = next;
        slots[i].done = 0;
        slots[i].len = std::min<std::uint64_t>(k_direct_block, bytes - next);
        next += slots[i].len;
        submit(i);
        ++inflight;
        return true;
    };
    Measure m;
    const auto t0 = Clock::now();
    bool ok = std::all_of(slots.begin(), slots.end(), [](const Slot& s) { return s.buf != nullptr; });
    if (!ok) result = Error::system(ENOMEM, "posix_memalign of the O_DIRECT buffers");
    for (std::size_t i = 0; ok && i < slots.size(); ++i) start_next(i);
    while (ok && inflight) {
        if (const int e = ::io_uring_submit_and_wait(&ring, 1); e < 0 && e != -EINTR) {
            result = Error::system(-e, std::string("io_uring_submit_and_wait: ") + std::strerror(-e));
            break;
        }
        io_uring_cqe* cqe = nullptr;
        while (ok && ::io_uring_peek_cqe(&ring, &cqe) == 0) {
            const auto i = static_cast<std::size_t>(::io_uring_cqe_get_data64(cqe));
            const int res = cqe->res;
            ::io_uring_cqe_seen(&ring, cqe);
            Slot& s = slots[i];
            if (res <= 0 && res != -EAGAIN && res != -EINTR) {
                result = Error::system(res < 0 ? -res : EIO, "O_DIRECT read at " + std::to_string(s.off) + ": " +
                                                                 (res < 0 ? std::strerror(-res) : "end of file"));
                ok = false;
                break;
            }
            if (res > 0) s.done += static_cast<std::uint64_t>(res);
            if (s.done < s.len) {
                submit(i);
                continue;
            }
            for (std::uint64_t p = s.off / k_page; p < (s.off + s.len) / k_page; ++p)
                m.checksum += s.buf[touch_offset(static_cast<std::uint32_t>(p)) - s.off];
            finished += s.len;
            --inflight;
            start_next(i);
        }
    }
    m.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    ::io_uring_queue_exit(&ring);
    for (auto& s : slots) std::free(s.buf);
    if (ok && finished != bytes) result = Error::system(EIO, "O_DIRECT reads covered less than the file");
    if (ok && result) result = m;
    return result;
}

// ---- the cases --------------------------------------------------------------------------

struct Group {
    const CacheSetup& s;
    CacheRun& run;
    unsigned step = 0, steps = 5;

    void progress(const std::string& what)
    {
        if (s.progress) std::fprintf(stderr, "[cache %u/%u] %s\n", ++step, steps, what.c_str());
    }
    void failed(CacheCase& c, const std::string& why)
    {
        c.failure = why;
        s.error("cache " + c.id + ": " + why);
    }
    void add(CacheCase c) { run.cases.push_back(std::move(c)); }
    void end_daemon(CaseDaemon& d)
    {
        const pid_t pid = d.daemon ? d.daemon->pid() : -1;
        const long long hwm = pid > 0 ? process_vm_kib(pid, "VmHWM") : -1;
        run.daemons.push_back(d.description + " (peak RSS " + (hwm >= 0 ? mib(static_cast<double>(hwm) * 1024) : "n/a") + ")");
        d.conn.reset();
        d.daemon.reset();
    }
};

CacheCase make_case(const char* num, const char* id, const char* name, const char* baseline, const char* title,
                    double target, std::uint64_t pages, unsigned procs = 1)
{
    CacheCase c;
    c.num = num;
    c.id = id;
    c.name = name;
    c.baseline = baseline;
    c.title = title;
    c.target = target;
    c.target_case = target > 0;
    c.pages = pages;
    c.processes = procs;
    return c;
}

// Cases 1 and 2: a reader in a 256 MiB cgroup, pagerd with --memory-max 256MiB.
void cgroup_cases(Group& g)
{
    const CacheSetup& s = g.s;
    const std::uint64_t pages = s.bytes / k_page;
    CacheCase c1 = make_case("1", "cgroup-seq-cold", "seq-cold, cg 256M", "mmap, cg 256M",
                             "sequential read, cold, the reader in a 256 MiB memory cgroup; pagerd --memory-max 256MiB",
                             1.0, pages);
    // Case 2's baseline says MADV_RANDOM, as a random reader of a file larger than its
    // memory would: plain mmap reads 128 KiB around every miss and thrashes the 256 MiB
    // cgroup (it did not finish 200000 reads within 300 s here): it is x1, stopped after 60 s.
    CacheCase c2 = make_case("2", "cgroup-zipf-cold", "zipf-cold, cg 256M", "mmap+MADV_RANDOM, cg 256M",
                             "random 4 KiB reads, Zipf(0.99) over the file's pages, cold, the reader in a 256 MiB "
                             "memory cgroup; pagerd --memory-max 256MiB",
                             1.0, s.zipf_reads);
    CacheCase x1 = make_case("x1", "cgroup-zipf-cold/mmap", "zipf-cold, cg 256M", "mmap, cg 256M",
                             "case 2's pagerd side against plain mmap (stopped after 60 s)", -1, s.zipf_reads);
    g.progress("cache: sequential and Zipf reads in a 256 MiB cgroup (pagerd --memory-max 256MiB)");
    auto skip_all = [&](const std::string& why) {
        for (CacheCase* c : {&c1, &c2, &x1}) c->skipped = why;
        g.add(c1), g.add(c2), g.add(x1);
        ++g.step;
    };
    if (!s.cold_possible) return skip_all("cold cases not possible here (" + s.cold_note + ")");
    {
        MemoryCgroup probe(k_cgroup_limit);
        if (!probe.ok()) return skip_all("no memory cgroup: " + probe.error());
    }
    auto d = start_daemon(s, k_small_budget);
    if (!d) {
        for (CacheCase* c : {&c1, &c2, &x1}) g.failed(*c, "starting pagerd: " + d.error().message);
        g.add(c1), g.add(c2), g.add(x1);
        ++g.step;
        return;
    }
    CaseDaemon& dm = d.value();
    const std::string sock = dm.daemon->socket();

    // One side: cold page cache, empty daemon cache (pagerd), then the readers.
    auto side = [&](const std::vector<std::string>& args, bool pagerd, int cap_ms = 0) -> Result<Side> {
        if (auto p = make_cold(s.fd, s.bytes); !p) return p.error();
        if (pagerd)
            if (auto e = cache_empty(*dm.conn); !e) return e.error();
        SideSpec spec{args, 1, true, dm.conn.get(), pagerd ? dm.daemon->pid() : -1, cap_ms};
        return run_side(s, spec);
    };
    auto compare = [&](CacheCase& c, const Result<Side>& b, const Result<Side>& p) {
        if (!b) return g.failed(c, "baseline " + c.baseline + ": " + b.error().message);
        if (!p) return g.failed(c, "pagerd side: " + p.error().message);
        if (b->capped) {
            c.base_bound = true;
            c.notes.push_back("the baseline did not finish within " + fmt(b->wall) +
                              " s and was stopped: its figure is an upper bound, the ratio a lower bound; "
                              "cgroup peak " + mib(static_cast<double>(b->cgroup_peak)) + ", OOM kills " +
                              std::to_string(b->oom_kills));
        } else if (b->checksum != p->checksum) {
            return g.failed(c, "the bytes read through pagerd differ from those through the baseline");
        }
        c.base_value = gbps_of(b->wall, c.pages, 1);
        c.pagerd_value = gbps_of(p->wall, c.pages, 1);
        if (!b->capped) describe_sides(c, b.value(), p.value());
    };

    {
        auto b = side(reader_args("mmap", s, "seq"), false);
        auto p = b ? side(reader_args("pagerd", s, "seq", 0, sock), true) : Result<Side>(Error::system(ECANCELED, "not run"));
        compare(c1, b, p);
    }
    g.progress("cache: Zipf(0.99) reads in a 256 MiB cgroup");
    {
        auto b = side(reader_args("mmap-random", s, "zipf", s.zipf_reads), false);
        auto p = side(reader_args("pagerd", s, "zipf", s.zipf_reads, sock), true);
        auto bp = side(reader_args("mmap", s, "zipf", s.zipf_reads), false, k_thrash_cap_ms);
        compare(c2, b, p);
        compare(x1, bp, p);
        // What a cache could do at best with this list of reads.
        const auto list = zipf_pages(pages, s.zipf_reads, k_zipf_theta);
        std::unordered_set<std::uint32_t> distinct(list.begin(), list.end());
        std::unordered_map<std::uint32_t, std::uint64_t> freq;
        for (const auto p2 : list) ++freq[p2];
        std::vector<std::uint64_t> f;
        for (const auto& [k, n] : freq) f.push_back(n);
        std::sort(f.rbegin(), f.rend());
        const std::uint64_t fit = std::min<std::uint64_t>(f.size(), k_small_budget / k_page);
        const std::uint64_t in_top = std::accumulate(f.begin(), f.begin() + static_cast<long>(fit), std::uint64_t{0});
        c2.notes.push_back("the reads: " + std::to_string(list.size()) + " over " + std::to_string(distinct.size()) +
                           " distinct pages (" + mib(static_cast<double>(distinct.size() * k_page)) +
                           "); reads of a page read before: " +
                           pct(1.0 - static_cast<double>(distinct.size()) / static_cast<double>(list.size())) +
                           "; reads of the " + std::to_string(fit) + " most read pages (what 256 MiB holds): " +
                           pct(static_cast<double>(in_top) / static_cast<double>(list.size())));
    }
    g.add(c1), g.add(c2), g.add(x1);
    g.end_daemon(dm);
}

// Cases 3 to 5: pagerd --memory-max 1536MiB, no cgroup.
void shared_cases(Group& g)
{
    const CacheSetup& s = g.s;
    const std::uint64_t pages = s.bytes / k_page;
    CacheCase c3m = make_case("3m", "4-readers-memory", "4 readers: cache peak", "one copy of the file",
                              "4 processes read the whole file at once, cold: the daemon's cache_bytes at its "
                              "highest (sampled every 20 ms) against the file's size",
                              1.1, pages, k_readers);
    c3m.memory = true;
    CacheCase c3t = make_case("3t", "4-readers-time", "4 readers, seq-cold", "4 x mmap, seq-cold",
                              "4 processes read the whole file at once, cold; GB/s of the 4 together", 0.8, pages,
                              k_readers);
    CacheCase c4 = make_case("4", "second-reader-random", "rand, 2nd reader", "mmap, 2nd reader, hot",
                             "random 4 KiB reads by a 2nd process of a file a 1st process loaded and keeps mapped",
                             0.8, s.random.size());
    CacheCase c5 = make_case("5", "seq-cold-best-kernel", "seq-cold-1t", "best kernel path",
                             "sequential read, cold, 1 thread, against the fastest of mmap, mmap+MADV_SEQUENTIAL, "
                             "1 MiB pread loop, O_DIRECT 1 MiB reads 32 deep (io_uring)",
                             1.0, pages);
    g.progress("cache: 4 readers of one file (pagerd --memory-max 1536MiB)");
    auto d = start_daemon(s, k_big_budget);
    if (!d) {
        for (CacheCase* c : {&c3m, &c3t, &c4, &c5}) g.failed(*c, "starting pagerd: " + d.error().message);
        for (CacheCase* c : {&c3m, &c3t, &c4, &c5}) g.add(*c);
        g.step += 2;
        return;
    }
    CaseDaemon& dm = d.value();
    const std::string sock = dm.daemon->socket();
    const pid_t dpid = dm.daemon->pid();

    // Case 3.
    if (!s.cold_possible) {
        c3m.skipped = c3t.skipped = "cold cases not possible here (" + s.cold_note + ")";
    } else {
        auto side = [&](const std::string& mode, bool pagerd) -> Result<Side> {
            if (auto p = make_cold(s.fd, s.bytes); !p) return p.error();
            if (pagerd)
                if (auto e = cache_empty(*dm.conn); !e) return e.error();
            SideSpec spec{reader_args(mode, s, "seq", 0, pagerd ? sock : std::string()), k_readers, false,
                          dm.conn.get(), pagerd ? dpid : -1};
            return run_side(s, spec);
        };
        auto b = side("mmap", false);
        auto p = b ? side("pagerd", true) : Result<Side>(Error::system(ECANCELED, "not run"));
        if (!b) {
            g.failed(c3m, "baseline: " + b.error().message);
            g.failed(c3t, "baseline: " + b.error().message);
        } else if (!p) {
            g.failed(c3m, "pagerd side: " + p.error().message);
            g.failed(c3t, "pagerd side: " + p.error().message);
        } else if (b->checksum != p->checksum) {
            g.failed(c3t, "the bytes read through pagerd differ from those through the baseline");
            g.failed(c3m, c3t.failure);
        } else {
            c3t.base_value = gbps_of(b->wall, pages, k_readers);
            c3t.pagerd_value = gbps_of(p->wall, pages, k_readers);
            describe_sides(c3t, b.value(), p.value());
            c3m.base_value = static_cast<double>(s.bytes);
            c3m.pagerd_value = static_cast<double>(p->peak_cache_bytes);
            c3m.notes.push_back("the file in the kernel's page cache after the 4 mmap readers: " +
                                pct(b->kernel_resident) + "; after the 4 pagerd readers: " + pct(p->kernel_resident) +
                                " (not counted in the ratio: the daemon reads through it and drops its pages after "
                                "each load with POSIX_FADV_DONTNEED)");
            c3m.figures.push_back({"kernel_page_cache_fraction_after_mmap", b->kernel_resident});
            c3m.figures.push_back({"kernel_page_cache_fraction_after_pagerd", p->kernel_resident});
            c3m.figures.push_back({"pagerd_cache_bytes_end", static_cast<double>(p->st1.cache_bytes)});
        }
    }
    g.add(c3m), g.add(c3t);

    // Case 4: the first reader (untimed) loads the whole file and keeps it mapped; the second
    // reads s.random, timed.
    g.progress("cache: a 2nd reader of a file a 1st one loaded");
    {
        auto side = [&](const std::string& mode, bool pagerd) -> Result<Side> {
            if (auto p = make_cold(s.fd, s.bytes); !p) return p.error();
            if (pagerd)
                if (auto e = cache_empty(*dm.conn); !e) return e.error();
            const std::string sk = pagerd ? sock : std::string();
            auto first = Child::start(reader_args(mode, s, "seq", 0, sk), s.fd, nullptr);
            if (!first) return first.error();
            if (auto r = first.value()->wait_ready(); !r) return r.error();
            if (auto r = first.value()->go(); !r) return r.error();
            if (auto r = first.value()->wait_done(); !r) return r.error();
            SideSpec spec{reader_args(mode, s, "rand", s.random.size(), sk), 1, false, dm.conn.get(),
                          pagerd ? dpid : -1};
            auto second = run_side(s, spec);
            if (auto r = first.value()->finish(); !r && second) return r.error();
            if (second) second->peak_cache_bytes = std::max(second->peak_cache_bytes, second->st0.cache_bytes);
            return second;
        };
        auto b = side("mmap", false);
        auto p = b ? side("pagerd", true) : Result<Side>(Error::system(ECANCELED, "not run"));
        if (!b)
            g.failed(c4, "baseline: " + b.error().message);
        else if (!p)
            g.failed(c4, "pagerd side: " + p.error().message);
        else if (b->checksum != p->checksum)
            g.failed(c4, "the bytes read through pagerd differ from those through the baseline");
        else {
            c4.base_value = gbps_of(b->wall, c4.pages, 1);
            c4.pagerd_value = gbps_of(p->wall, c4.pages, 1);
            describe_sides(c4, b.value(), p.value());
            c4.notes.push_back("2nd reader's faults: kernel " + std::to_string(b->done[0].minflt) + " minor, pagerd " +
                               std::to_string(delta(p->st0, p->st1).faults) + " served by the daemon (" +
                               fmt(p->wall * 1e6 / static_cast<double>(std::max<std::uint64_t>(1, delta(p->st0, p->st1).faults))) +
                               " µs of the reader's time per fault)");
        }
    }
    g.add(c4);

    // Case 5, in this process.
    g.progress("cache: sequential cold read against the best kernel path");
    if (!s.cold_possible) {
        c5.skipped = "cold cases not possible here (" + s.cold_note + ")";
        g.add(c5);
    } else {
        const auto seq = sequential_pages(pages);
        struct Path {
            const char* id;
            const char* name;
            std::function<Result<Measure>()> run;
            Result<Measure> m = Error{};
        };
        std::vector<Path> paths;
        paths.push_back({"mmap", "mmap", [&] { return measure_mmap(s.fd, s.bytes, seq, 1, MADV_NORMAL); }});
        paths.push_back({"mmap-madv-sequential", "mmap+MADV_SEQUENTIAL",
                         [&] { return measure_mmap(s.fd, s.bytes, seq, 1, MADV_SEQUENTIAL); }});
        paths.push_back({"pread-1m", "pread 1 MiB loop", [&] { return measure_pread(s.fd, s.bytes); }});
        paths.push_back({"o-direct-uring-32", "O_DIRECT 1 MiB x32 uring", [&] { return measure_direct(s.fd, s.bytes); }});
        for (auto& path : paths) {
            if (auto p = make_cold(s.fd, s.bytes); !p) {
                path.m = p.error();
                continue;
            }
            path.m = path.run();
        }
        Result<PagerdRun> pd = Error{};
        if (auto p = make_cold(s.fd, s.bytes); !p)
            pd = p.error();
        else if (auto e = cache_empty(*dm.conn); !e)
            pd = e.error();
        else {
            PagerdSetup ps;
            ps.daemon_pid = dpid;
            const auto st0 = dm.conn->status();
            const long long dio0 = proc_io(dpid, "read_bytes");
            pd = measure_pagerd(*dm.conn, s.fd, s.bytes, seq, 1, ps);
            const double resident = resident_fraction(s.fd, s.bytes);
            const auto st1 = dm.conn->status();
            const long long dio1 = proc_io(dpid, "read_bytes");
            if (pd && st0 && st1) {
                const CacheDelta dd = delta(st0.value(), st1.value());
                c5.notes.push_back("pagerd: faults " + std::to_string(dd.faults) + ", cache loads " +
                                   std::to_string(dd.loads) + " pages, daemon CPU " +
                                   (pd->cpu_seconds >= 0 ? fmt(pd->cpu_seconds) + " s" : "n/a") +
                                   (dio0 >= 0 && dio1 >= 0 ? ", daemon read " + mib(static_cast<double>(dio1 - dio0)) +
                                                                 " from the disk"
                                                           : "") +
                                   "; the file in the kernel's page cache after: " + pct(resident));
                c5.figures.push_back({"pagerd_faults", static_cast<double>(dd.faults)});
                c5.figures.push_back({"pagerd_daemon_cpu_seconds", pd->cpu_seconds});
            }
        }
        double best = -1;
        std::string best_name;
        std::vector<CacheCase> rows;
        int xn = 2;
        for (auto& path : paths) {
            CacheCase x = make_case("", "", "seq-cold-1t", path.name, "", -1, pages);
            x.num = "x" + std::to_string(xn++);
            x.id = std::string("seq-cold-best-kernel/") + path.id;
            x.title = std::string("case 5's pagerd side against ") + path.name;
            if (!path.m) {
                g.failed(x, "baseline " + std::string(path.name) + ": " + path.m.error().message);
            } else if (pd && path.m->checksum != pd->m.checksum) {
                g.failed(x, "the bytes read through pagerd differ from those read by " + std::string(path.name));
            } else {
                x.base_value = gbps_of(path.m->seconds, pages, 1);
                x.figures.push_back({"baseline_seconds", path.m->seconds});
                if (x.base_value > best) {
                    best = x.base_value;
                    best_name = path.name;
                }
            }
            if (pd) x.pagerd_value = gbps_of(pd->m.seconds, pages, 1);
            rows.push_back(std::move(x));
        }
        // The same pagerd side without the cache (PAGERD_CACHE=0: the region is private
        // memory the daemon copies into), for comparison.
        Result<PagerdRun> nocache = Error{};
        if (auto p = make_cold(s.fd, s.bytes); !p) {
            nocache = p.error();
        } else {
            const char* was = std::getenv("PAGERD_CACHE");
            const std::string saved = was ? was : "";
            ::setenv("PAGERD_CACHE", "0", 1);
            PagerdSetup ps;
            ps.daemon_pid = dpid;
            nocache = measure_pagerd(*dm.conn, s.fd, s.bytes, seq, 1, ps);
            if (was)
                ::setenv("PAGERD_CACHE", saved.c_str(), 1);
            else
                ::unsetenv("PAGERD_CACHE");
        }
        {
            CacheCase x = make_case("", "seq-cold-best-kernel/pagerd-no-cache", "seq-cold-1t, PAGERD_CACHE=0", "", "",
                                    -1, pages);
            x.num = "x" + std::to_string(xn++);
            x.title = "case 5 with the pagerd side mapped without the cache (PAGERD_CACHE=0)";
            if (!nocache) {
                g.failed(x, "pagerd side without the cache: " + nocache.error().message);
            } else if (pd && nocache->m.checksum != pd->m.checksum) {
                g.failed(x, "the bytes read through pagerd without the cache differ from those with it");
            } else {
                x.baseline = best > 0 ? "best: " + best_name : "best kernel path";
                x.base_value = best;
                x.pagerd_value = gbps_of(nocache->m.seconds, pages, 1);
                x.notes.push_back("pagerd without the cache: faults " + std::to_string(nocache->faults) +
                                  ", daemon CPU " + (nocache->cpu_seconds >= 0 ? fmt(nocache->cpu_seconds) + " s" : "n/a"));
            }
            rows.push_back(std::move(x));
        }
        if (!pd)
            g.failed(c5, "pagerd side: " + pd.error().message);
        else if (best <= 0)
            g.failed(c5, "no kernel path ran");
        else {
            c5.baseline = "best: " + best_name;
            c5.base_value = best;
            c5.pagerd_value = gbps_of(pd->m.seconds, pages, 1);
            c5.figures.push_back({"pagerd_seconds", pd->m.seconds});
        }
        g.add(c5);
        for (auto& x : rows) g.add(std::move(x));
    }
    g.end_daemon(dm);
}

}  // namespace

CacheRun run_cache_cases(const CacheSetup& s)
{
    CacheRun run;
    const auto t0 = Clock::now();
    {
        std::ifstream in("/proc/loadavg");
        std::string l1, l5;
        if (in >> l1 >> l5) run.load = l1 + " (1 min), " + l5 + " (5 min)";
    }
    Group g{s, run};
    cgroup_cases(g);
    shared_cases(g);
    // Table order: the target rows by number, then the rows without a target.
    std::stable_sort(run.cases.begin(), run.cases.end(),
                     [](const CacheCase& a, const CacheCase& b) { return a.target_case && !b.target_case; });
    run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return run;
}

}  // namespace pagerd::bench
