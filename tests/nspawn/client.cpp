// pagerd-nspawn-client: the client side of tests/nspawn (run.sh), run inside a container
// whose systemd socket-activates pagerd and restarts it after a SIGKILL.
//
//   pagerd-nspawn-client prepare DIR
//       writes DIR/data (64 MiB) and DIR/shared (1 MiB) with known, position-dependent bytes
//   pagerd-nspawn-client run DIR STARTED READDONE
//       connects to /run/pagerd/pagerd.sock ($PAGERD_SOCKET), maps DIR/data read-only and
//       DIR/shared Shared (Tracking::UffdWp), dirties pages of the Shared region, then touches
//       every page of the read-only region slowly (about 10 s), creating the file STARTED
//       after the first megabyte; checks every byte; creates READDONE; writes more Shared
//       pages; flushes. Exit 0 only when every byte matched and the flush succeeded.
//   pagerd-nspawn-client check DIR
//       DIR/shared holds its original bytes plus every write `run` made, before and after
//       the restart. Exit 0 when it does.
//
// Every failure prints one line starting with "client:" and exits non-zero.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "pagerd/client.hpp"

using namespace pagerd::libclient;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_data_size = 64ull << 20;
constexpr std::uint64_t k_shared_size = 1ull << 20;
constexpr std::uint32_t k_data_seed = 811;
constexpr std::uint32_t k_shared_seed = 812;
// Pacing of the read-only pass: a pause after every 16 pages.
constexpr std::uint64_t k_pages_per_pause = 16;
constexpr auto k_pause = std::chrono::milliseconds(9);
// Pages counted from the start of the read-only region before STARTED is created.
constexpr std::uint64_t k_started_after_pages = 256;

// Writes to the Shared region: before the restart (made right after mapping, while the
// first daemon runs) and after it (once the read-only pass is over).
struct Write {
    std::uint64_t offset;
    std::uint64_t length;
    std::uint8_t value;
};
constexpr Write k_before[] = {{0, 2 * k_page, 0x5A}, {100 * k_page, k_page, 0x5B}};
constexpr Write k_after[] = {{200 * k_page, 4 * k_page, 0xA5}, {255 * k_page + 100, 17, 0xA6}};
constexpr std::uint64_t k_expected_dirty_pages = 2 + 1 + 4 + 1;

// Byte i of a file made with `seed` (the same function as tests/integration's harness).
std::uint8_t pattern_byte(std::uint64_t i, std::uint32_t seed)
{
    std::uint64_t x = (i / 8 + 1) * 0x9E3779B97F4A7C15ull ^ (std::uint64_t{seed} << 32);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return static_cast<std::uint8_t>(x >> (8 * (i % 8)));
}

std::vector<std::uint8_t> pattern(std::uint64_t size, std::uint32_t seed)
{
    std::vector<std::uint8_t> v(size);
    for (std::uint64_t i = 0; i < size; ++i) v[i] = pattern_byte(i, seed);
    return v;
}

// What DIR/shared holds after `run`.
std::vector<std::uint8_t> expected_shared()
{
    auto v = pattern(k_shared_size, k_shared_seed);
    for (const auto& w : k_before) std::memset(v.data() + w.offset, w.value, w.length);
    for (const auto& w : k_after) std::memset(v.data() + w.offset, w.value, w.length);
    return v;
}

int fail(int code, const std::string& why)
{
    std::fprintf(stderr, "client: %s\n", why.c_str());
    return code;
}

bool write_file(const std::string& path, const std::vector<std::uint8_t>& bytes)
{
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n <= 0) break;
        done += static_cast<std::size_t>(n);
    }
    const bool ok = done == bytes.size() && ::fsync(fd) == 0;
    return ::close(fd) == 0 && ok;
}

bool read_whole(const std::string& path, std::vector<std::uint8_t>& out)
{
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    out.clear();
    std::uint8_t buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
    ::close(fd);
    return n == 0;
}

bool touch(const std::string& path)
{
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    const std::string pid = std::to_string(::getpid()) + "\n";
    const bool ok = ::write(fd, pid.data(), pid.size()) == static_cast<ssize_t>(pid.size());
    return ::close(fd) == 0 && ok;
}

// First difference between memory and the expected bytes, or -1.
long long first_difference(const volatile std::uint8_t* p, const std::uint8_t* want, std::uint64_t n)
{
    for (std::uint64_t i = 0; i < n; ++i)
        if (p[i] != want[i]) return static_cast<long long>(i);
    return -1;
}

int prepare(const std::string& dir)
{
    if (!write_file(dir + "/data", pattern(k_data_size, k_data_seed)))
        return fail(2, "cannot write " + dir + "/data: " + std::strerror(errno));
    if (!write_file(dir + "/shared", pattern(k_shared_size, k_shared_seed)))
        return fail(2, "cannot write " + dir + "/shared: " + std::strerror(errno));
    std::printf("client: wrote %s/data (%llu bytes) and %s/shared (%llu bytes)\n", dir.c_str(),
                static_cast<unsigned long long>(k_data_size), dir.c_str(),
                static_cast<unsigned long long>(k_shared_size));
    return 0;
}

int check(const std::string& dir)
{
    std::vector<std::uint8_t> got;
    if (!read_whole(dir + "/shared", got)) return fail(2, "cannot read " + dir + "/shared");
    const auto want = expected_shared();
    if (got.size() != want.size())
        return fail(3, dir + "/shared has " + std::to_string(got.size()) + " bytes, not " + std::to_string(want.size()));
    for (std::uint64_t i = 0; i < want.size(); ++i)
        if (got[i] != want[i]) {
            char msg[160];
            std::snprintf(msg, sizeof msg, "%s/shared byte %llu (page %llu) is 0x%02x, not 0x%02x", dir.c_str(),
                          static_cast<unsigned long long>(i), static_cast<unsigned long long>(i / k_page), got[i],
                          want[i]);
            return fail(3, msg);
        }
    std::printf("client: %s/shared holds the writes made before and after the restart\n", dir.c_str());
    return 0;
}

int run(const std::string& dir, const std::string& started, const std::string& readdone)
{
    const auto t_start = Clock::now();
    auto conn = Connection::connect({"", "nspawn-client"});
    if (!conn) return fail(10, "connect: " + conn.error().message);
    auto& c = *conn.value();
    auto ro = c.map_file(dir + "/data", {0, k_data_size, Access::ReadOnly});
    if (!ro) return fail(11, "map data read-only: " + ro.error().message);
    auto sh = c.map_file(dir + "/shared", {0, k_shared_size, Access::Shared, Tracking::UffdWp});
    if (!sh) return fail(12, "map shared: " + sh.error().message);
    if (sh->tracking != Tracking::UffdWp)
        return fail(12, std::string("shared region tracks writes by ") + tracking_name(sh->tracking) + ", not uffd-wp");

    // Dirty the Shared region while the first daemon serves it; nothing flushes these
    // pages before the daemon is killed.
    auto* wp = static_cast<std::uint8_t*>(sh->addr);
    for (const auto& w : k_before) std::memset(wp + w.offset, w.value, w.length);

    // The read-only pass: every page, every byte, slowly enough for a restart to land in it.
    const auto want = pattern(k_data_size, k_data_seed);
    const auto* p = static_cast<const volatile std::uint8_t*>(ro->addr);
    double longest_ms = 0;
    std::uint64_t longest_page = 0;
    for (std::uint64_t page = 0; page < k_data_size / k_page; ++page) {
        const std::uint64_t off = page * k_page;
        const auto t0 = Clock::now();
        (void)p[off + (page * 131) % k_page];  // the first touch: a fault served by the daemon
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (ms > longest_ms) {
            longest_ms = ms;
            longest_page = page;
        }
        const long long bad = first_difference(p + off, want.data() + off, k_page);
        if (bad >= 0) {
            char msg[160];
            std::snprintf(msg, sizeof msg, "data byte %llu (page %llu) is 0x%02x, not 0x%02x",
                          static_cast<unsigned long long>(off + static_cast<std::uint64_t>(bad)),
                          static_cast<unsigned long long>(page), p[off + static_cast<std::uint64_t>(bad)],
                          want[off + static_cast<std::uint64_t>(bad)]);
            return fail(13, msg);
        }
        if (page + 1 == k_started_after_pages && !touch(started))
            return fail(14, "cannot create " + started + ": " + std::strerror(errno));
        if ((page + 1) % k_pages_per_pause == 0) std::this_thread::sleep_for(k_pause);
    }
    // Once more, all of it: nothing loaded before the restart changed or went away.
    const long long bad = first_difference(p, want.data(), k_data_size);
    if (bad >= 0) return fail(15, "data byte " + std::to_string(bad) + " changed after it was first read");
    if (!touch(readdone)) return fail(14, "cannot create " + readdone + ": " + std::strerror(errno));
    std::printf("client: read-only pass: %llu pages, every byte right; longest first touch %.1f ms (page %llu)\n",
                static_cast<unsigned long long>(k_data_size / k_page), longest_ms,
                static_cast<unsigned long long>(longest_page));

    // Writes after the restart, then the flush that must carry both sets to the file.
    for (const auto& w : k_after) std::memset(wp + w.offset, w.value, w.length);
    const auto shared_want = expected_shared();
    const long long sbad = first_difference(wp, shared_want.data(), k_shared_size);
    if (sbad >= 0) return fail(16, "shared region byte " + std::to_string(sbad) + " is not what was written");
    auto f = c.flush(sh.value());
    if (!f) return fail(17, "flush: " + f.error().message);
    std::printf("client: flush wrote %llu page(s), %llu bytes\n", static_cast<unsigned long long>(f->pages),
                static_cast<unsigned long long>(f->bytes));
    if (f->pages < k_expected_dirty_pages)
        return fail(18, "flush wrote " + std::to_string(f->pages) + " page(s); " +
                            std::to_string(k_expected_dirty_pages) + " were written (some dirty pages were lost)");
    if (!c.daemon_alive()) return fail(19, "the connection to the daemon is lost");
    if (auto u = c.unmap(sh.value()); !u) return fail(20, "unmap shared: " + u.error().message);
    if (auto u = c.unmap(ro.value()); !u) return fail(20, "unmap data: " + u.error().message);
    std::printf("client: done in %.1f s\n", std::chrono::duration<double>(Clock::now() - t_start).count());
    return 0;
}

}  // namespace

int main(int argc, char** argv)
{
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "prepare" && argc == 3) return prepare(argv[2]);
    if (mode == "check" && argc == 3) return check(argv[2]);
    if (mode == "run" && argc == 5) return run(argv[2], argv[3], argv[4]);
    std::fprintf(stderr, "usage: %s prepare DIR | run DIR STARTED READDONE | check DIR\n", argv[0]);
    return 64;
}
