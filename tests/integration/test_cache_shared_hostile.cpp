// Hostile Shared clients of the daemon's page cache (MAP with CACHE | SHARED; see
// docs/writes.md, "In the page cache"). Such a client gets a READ-WRITE descriptor of the
// cache memfd: with it, and with its own userfaultfd and file descriptor, it can punch
// holes in the cache, pwrite into it, set O_APPEND on the file it passed, or unregister its
// view so that the daemon cannot write-protect it. It has the file open for writing, so it
// may change every byte of the file anyway: what must hold is that the daemon neither
// crashes nor stalls, that no other client hangs, that other clients only ever see bytes
// that someone wrote (the file's, a Shared client's, the hostile's own), and that an honest
// Shared client's flushed writes reach the file.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "harness.hpp"
#include "pagerd/proto/constants.hpp"
#include "raw_client.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::MapOptions;
using libclient::Tracking;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;
// What libclient asks for a Shared CACHE region: MINOR for the cache's pages, WP to see writes.
constexpr std::uint64_t k_shared_features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON | UFFD_FEATURE_MINOR_SHMEM |
                                            UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
constexpr std::uint8_t k_hostile = 0xBD;  // every byte the hostile client writes

std::uint64_t round_up(std::uint64_t v, std::uint64_t unit) { return (v + unit - 1) / unit * unit; }

// A raw client speaking HELLO and REGISTER_UFFD with the features of a Shared CACHE region.
// Destroy it before unmapping a view registered with its userfaultfd: munmap of a
// registered range waits until the UNMAP event is read, by the daemon, which may be gone
// (a failed test); without this process's copy of the userfaultfd nobody waits for it.
struct RawShared {
    explicit RawShared(const Daemon& daemon, std::uint64_t features = k_shared_features) : client(daemon.socket())
    {
        client.hello();
        uffd = make_uffd_with(features);
        client.send(proto::RegisterUffd{features, 0}, {uffd.get()});
        client.expect<proto::Ok>();
    }
    // MAP of [0, length) of `file` at `addr` with `flags`: the reply and its descriptors.
    RawClient::WithFds map(std::uint64_t addr, std::uint64_t length, int file, std::uint32_t flags)
    {
        client.send(proto::Map{addr, length, 0, flags, proto::Prefetch::NONE}, {file});
        auto got = client.receive_with_fds();
        REQUIRE(got.has_value());
        return std::move(*got);
    }
    RawClient client;
    util::UniqueFd uffd;
};

util::UniqueFd cache_of(RawClient::WithFds& got)
{
    if (const auto* e = std::get_if<proto::ErrorReply>(&got.msg.body)) FAIL("MAP refused: " << e->text);
    REQUIRE(std::holds_alternative<proto::CacheMapped>(got.msg.body));
    REQUIRE(got.fds.size() == 1);
    return std::move(got.fds[0]);
}

libclient::Region map_shared(libclient::Connection& c, const std::string& path, std::uint64_t length)
{
    MapOptions o;
    o.length = length;
    o.access = Access::Shared;
    o.tracking = Tracking::UffdWp;
    auto r = c.map_file(path, o);
    if (!r) FAIL("map " << path << " Shared: " << r.error().message);
    REQUIRE(r->tracking == Tracking::UffdWp);
    return r.value();
}

std::string describe_status(int status)
{
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "wait status " + std::to_string(status);
}

std::string figures(const libclient::Status& s)
{
    return "cache: resident " + std::to_string(s.cache_bytes) + ", dirty " + std::to_string(s.cache_dirty_bytes) +
           ", evictions " + std::to_string(s.cache_evictions) + ", write-backs " + std::to_string(s.cache_writebacks) +
           ", loads " + std::to_string(s.cache_loads) + ", sigbus " + std::to_string(s.sigbus_faults);
}

// The "N bytes dirty" of `pagerctl status`'s page cache line; -1 if it is not there.
long long pagerctl_dirty_bytes(const Daemon& daemon, std::string& out)
{
    const auto r = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status"});
    out = r.out;
    if (!exited_with(r.status, 0)) return -1;
    const auto at = r.out.find(" bytes dirty");
    if (at == std::string::npos) return -1;
    const auto from = r.out.rfind(' ', at - 1);
    return std::stoll(r.out.substr(from + 1, at - from - 1));
}

bool readable(int fd)
{
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// The daemon's warnings and errors so far (at most `max` lines), to explain a failure.
std::string warnings(const Daemon& daemon, std::size_t max = 20)
{
    std::istringstream in(daemon.log());
    std::string line, out;
    std::size_t n = 0, more = 0;
    while (std::getline(in, line))
        if (line.find("[warning]") != std::string::npos || line.find("[warn]") != std::string::npos ||
            line.find("[error]") != std::string::npos || line.find("[critical]") != std::string::npos) {
            if (n++ < max) out += line + "\n";
            else ++more;
        }
    if (more) out += "... and " + std::to_string(more) + " more\n";
    return out.empty() ? "(none)" : out;
}

}  // namespace

TEST_CASE("MAP with CACHE and SHARED: descriptors and flags it refuses, and the read-write cache descriptor it gives",
          "[cache][shared][hostile][bad-input]")
{
    TempDir dir;
    const std::uint64_t size = 256 * 1024 + 100;  // a partial last page
    const std::uint64_t whole = round_up(size, k_page);
    make_file(dir.file("data"), size, 121);
    const auto want = read_file(dir.file("data"));
    Daemon daemon;
    Reservation mem(4 * whole);
    const std::uint64_t a = mem.start();
    RawShared c(daemon);
    const std::uint32_t shared = proto::k_map_cache | proto::k_map_shared;

    // The file must be open O_RDWR, and not O_APPEND (a positioned write would append).
    util::UniqueFd rdonly(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
    util::UniqueFd append(::open(dir.file("data").c_str(), O_RDWR | O_APPEND | O_CLOEXEC));
    util::UniqueFd rdwr(::open(dir.file("data").c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE((rdonly && append && rdwr));
    for (const int bad : {rdonly.get(), append.get()}) {
        INFO("descriptor flags " << std::hex << ::fcntl(bad, F_GETFL));
        c.client.send(proto::Map{a, whole, 0, shared, proto::Prefetch::NONE}, {bad});
        c.client.expect_error(proto::ErrorCode::BAD_DESCRIPTOR);
    }
    // SHARED without CACHE, SHARED with PRIVATE_WRITABLE (with or without CACHE): BAD_RANGE,
    // with a descriptor that would do.
    for (const std::uint32_t flags : {proto::k_map_shared, proto::k_map_shared | proto::k_map_private_writable,
                                      shared | proto::k_map_private_writable}) {
        INFO("flags " << flags);
        c.client.send(proto::Map{a, whole, 0, flags, proto::Prefetch::NONE}, {rdwr.get()});
        c.client.expect_error(proto::ErrorCode::BAD_RANGE);
    }
    CHECK(daemon.status().cache_files == 0);  // none of it opened a cache

    // A right one: CACHE_MAPPED with one descriptor, open read-write.
    auto got = c.map(a, whole, rdwr.get(), shared);
    util::UniqueFd rw = cache_of(got);
    CHECK((::fcntl(rw.get(), F_GETFL) & O_ACCMODE) == O_RDWR);
    struct stat st{};
    REQUIRE(::fstat(rw.get(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0400);
    const off_t span = st.st_size;
    CHECK(span >= static_cast<off_t>(whole));
    const int seals = ::fcntl(rw.get(), F_GET_SEALS);
    CHECK((seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));

    // Another connection's ReadOnly CACHE map of the same file: the same cache, read-only.
    {
        RawShared other(daemon);
        auto ro = other.map(a, whole, rdonly.get(), proto::k_map_cache);
        util::UniqueFd rofd = cache_of(ro);
        CHECK((::fcntl(rofd.get(), F_GETFL) & O_ACCMODE) == O_RDONLY);
        struct stat rst{};
        REQUIRE(::fstat(rofd.get(), &rst) == 0);
        CHECK(rst.st_ino == st.st_ino);
        CHECK(rst.st_dev == st.st_dev);
        CHECK(daemon.status().cache_files == 1);
        // Even with an O_RDWR file descriptor, a map without SHARED gets the read-only one.
        RawShared third(daemon);
        auto ro2 = third.map(a, whole, rdwr.get(), proto::k_map_cache);
        util::UniqueFd ro2fd = cache_of(ro2);
        CHECK((::fcntl(ro2fd.get(), F_GETFL) & O_ACCMODE) == O_RDONLY);
    }

    // The read-write descriptor cannot resize the cache (the daemon's mapping of it would
    // SIGBUS if it shrank, and it spans the daemon's reservation) nor change its seals.
    errno = 0;
    CHECK(::ftruncate(rw.get(), span + static_cast<off_t>(k_mib)) == -1);
    CHECK(errno == EPERM);
    errno = 0;
    CHECK(::ftruncate(rw.get(), span - static_cast<off_t>(k_page)) == -1);
    CHECK(errno == EPERM);
    errno = 0;
    CHECK(::ftruncate(rw.get(), 0) == -1);
    CHECK(errno == EPERM);
    errno = 0;
    CHECK(::fallocate(rw.get(), 0, span, static_cast<off_t>(k_page)) == -1);  // growing by fallocate
    CHECK(errno == EPERM);
    const std::vector<std::uint8_t> junk(k_page, k_hostile);
    errno = 0;
    CHECK(::pwrite(rw.get(), junk.data(), k_page, span) == -1);  // growing by a write past the end
    CHECK(errno == EPERM);
    for (const int seal : {F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_SEAL}) {
        INFO("seal " << seal);
        errno = 0;
        CHECK(::fcntl(rw.get(), F_ADD_SEALS, seal) == -1);
        CHECK(errno == EPERM);
    }
    CHECK(::fcntl(rw.get(), F_GET_SEALS) == seals);
    REQUIRE(::fstat(rw.get(), &st) == 0);
    CHECK(st.st_size == span);
    CHECK((st.st_mode & 07777) == 0400);

    // It can write, though. A page the daemon never loaded, written into its hole, is not
    // the daemon's: a reader is shown the file's bytes (the page is punched and loaded).
    // A page the daemon loaded and the hostile client writes over is the cache's page:
    // every client sees the write (the hostile client could as well write the file).
    auto reader = daemon.connect("reader");
    MapOptions ro;
    ro.length = whole;
    ro.prefetch = libclient::Prefetch::None;  // each touch loads its own page only
    auto r = reader->map_file(dir.file("data"), ro);
    REQUIRE(r.ok());
    const auto* rp = static_cast<const volatile std::uint8_t*>(r->addr);
    const std::uint64_t hole = 7, loaded = 9;
    REQUIRE(rp[loaded * k_page] == want[loaded * k_page]);
    REQUIRE(::lseek(rw.get(), static_cast<off_t>(hole * k_page), SEEK_DATA) != static_cast<off_t>(hole * k_page));
    REQUIRE(::pwrite(rw.get(), junk.data(), k_page, static_cast<off_t>(hole * k_page)) == static_cast<ssize_t>(k_page));
    REQUIRE(::pwrite(rw.get(), junk.data(), k_page, static_cast<off_t>(loaded * k_page)) == static_cast<ssize_t>(k_page));
    CHECK(std::memcmp(const_cast<const std::uint8_t*>(rp) + hole * k_page, want.data() + hole * k_page, k_page) == 0);
    std::vector<std::uint8_t> back(k_page);
    REQUIRE(::pread(rw.get(), back.data(), k_page, static_cast<off_t>(hole * k_page)) == static_cast<ssize_t>(k_page));
    CHECK(std::memcmp(back.data(), want.data() + hole * k_page, k_page) == 0);  // the daemon's page now
    CHECK(rp[loaded * k_page + 10] == k_hostile);
    // Neither is dirty (the daemon saw no write through a view): the file is untouched.
    CHECK(daemon.status().cache_dirty_bytes == 0);
    CHECK((read_file(dir.file("data")) == want));

    // The daemon is fine; a reader that maps the file now reads the file's bytes where the
    // hostile client wrote nothing.
    c.client.send(proto::Ping{5});
    c.client.expect<proto::Pong>();
    auto late = daemon.connect("late reader");
    auto lr = late->map_file(dir.file("data"), {0, whole, Access::ReadOnly});
    REQUIRE(lr.ok());
    CHECK(std::memcmp(lr->addr, want.data(), loaded * k_page) == 0);
    CHECK(std::memcmp(static_cast<const std::uint8_t*>(lr->addr) + (loaded + 1) * k_page,
                      want.data() + (loaded + 1) * k_page, size - (loaded + 1) * k_page) == 0);
    CHECK(daemon.alive());
}

// Raw hostile writer against a reader and an honest Shared writer, each in a process of its
// own (a reader that got SIGBUS, or hung, shows in its wait status).
//
// What the reader may see, byte by byte, while the hostile client works (W: the pages the
// honest writer writes, its bytes [0, 64)):
//   - the file's own byte, anywhere;
//   - k_hostile, anywhere: the hostile pwrites whole pages of it over pages the daemon
//     loaded (directly, or into a hole the daemon just filled, or into a hole it punched
//     under a page the daemon still counts as loaded: the daemon cannot tell that page
//     from its own). A hostile page written into a hole the daemon knows to be a hole is
//     never shown (it is punched and the page loaded from the file), but a race test
//     cannot tell the cases apart;
//   - in W only: the writer's bytes 0x40..0x7F in [0, 64); and zeros anywhere in the page,
//     or k_hostile, that reached the file: a dirty page the hostile punched is written back
//     as zeros (docs/writes.md: the write-back reads the cache with pread), or with what the
//     hostile wrote into the hole;
//   - past the file's end in the last page: zeros or k_hostile (it is the cache's page,
//     shared, as the tail of a file's last page is in the kernel's page cache).
// Nothing else: no other client's bytes, no zeros outside W (a hole is never shown).
TEST_CASE("a hostile Shared writer punching and pwriting the cache harms no reader, no honest writer, no daemon",
          "[cache][shared][hostile][punch]")
{
    TempDir dir;
    const std::uint64_t size = 4 * k_mib + 100, whole = round_up(size, k_page), pages = whole / k_page;
    const std::uint64_t last = pages - 1;
    make_file(dir.file("data"), size, 131);
    const auto want = read_file(dir.file("data"));
    const auto in_w = [last](std::uint64_t pg) { return pg % 5 == 0 || pg == last; };
    constexpr std::uint8_t k_final = 0xC3;  // the honest writer's last write, after the hostile stopped
    Daemon daemon({"--memory-max", "2MiB"});  // evictions (and write-backs to make room) too
    const auto race_time = 3s;

    int reader_stop[2], writer_stop[2];
    REQUIRE(::pipe2(reader_stop, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(writer_stop, O_CLOEXEC) == 0);
    // Forked before this process opens any connection or starts any thread (harness.hpp).
    const pid_t reader = start_child([&] {
        ::close(reader_stop[1]);
        ::close(writer_stop[1]);
        auto c = libclient::Connection::connect({daemon.socket(), "reader"});
        if (!c) return 3;
        auto r = c.value()->map_file(dir.file("data"), {0, whole, Access::ReadOnly});
        if (!r) return 4;
        const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
        std::uint64_t sweeps = 0, bad = 0, hostile_bytes = 0, zero_bytes = 0, writer_bytes = 0;
        std::string first_bad;
        std::vector<std::uint8_t> page(k_page);
        while (!readable(reader_stop[0])) {
            for (std::uint64_t pg = 0; pg < pages; ++pg) {
                for (std::uint64_t i = 0; i < k_page; ++i) page[i] = p[pg * k_page + i];
                for (std::uint64_t i = 0; i < k_page; ++i) {
                    const std::uint64_t off = pg * k_page + i;
                    const std::uint8_t b = page[i];
                    bool ok;
                    if (off >= size) {
                        ok = b == 0 || b == k_hostile;
                    } else if (b == want[off]) {
                        ok = true;
                    } else if (b == k_hostile) {
                        ok = true;
                        ++hostile_bytes;
                    } else if (in_w(pg) && i < 64 && ((b >= 0x40 && b <= 0x7F) || b == k_final)) {
                        ok = true;
                        ++writer_bytes;
                    } else if (in_w(pg) && b == 0) {
                        ok = true;
                        ++zero_bytes;
                    } else {
                        ok = false;
                    }
                    if (!ok && bad++ == 0)
                        first_bad = "page " + std::to_string(pg) + " byte " + std::to_string(i) + ": " +
                                    std::to_string(b) + ", the file has " +
                                    (off < size ? std::to_string(want[off]) : std::string("nothing (past its end)"));
                }
            }
            ++sweeps;
        }
        write_text(dir.file("reader.txt"), std::to_string(sweeps) + " sweeps, " + std::to_string(bad) +
                                               " bad bytes (first: " + (bad ? first_bad : "none") + "), seen " +
                                               std::to_string(hostile_bytes) + " hostile bytes, " +
                                               std::to_string(writer_bytes) + " writer bytes, " +
                                               std::to_string(zero_bytes) + " zero bytes in its pages");
        return bad ? 1 : sweeps < 2 ? 2 : 0;
    });
    const pid_t writer = start_child([&] {
        ::close(reader_stop[1]);
        ::close(writer_stop[1]);
        auto c = libclient::Connection::connect({daemon.socket(), "writer"});
        if (!c) return 3;
        MapOptions o;
        o.length = whole;
        o.access = Access::Shared;
        o.tracking = Tracking::UffdWp;
        auto r = c.value()->map_file(dir.file("data"), o);
        if (!r) return 4;
        if (r->tracking != Tracking::UffdWp) return 5;
        auto* p = static_cast<std::uint8_t*>(r->addr);
        std::uint64_t rounds = 0, flushes = 0;
        std::string failure;
        while (!readable(writer_stop[0])) {
            const auto v = static_cast<std::uint8_t>(0x40 + rounds % 64);
            for (std::uint64_t pg = 0; pg < pages; ++pg)
                if (in_w(pg)) std::memset(p + pg * k_page, v, 64);
            if (++rounds % 3 == 0) {
                auto f = c.value()->flush(r.value());
                if (!f && failure.empty()) failure = "flush: " + f.error().message;
                ++flushes;
            }
        }
        // The hostile client is done: the last write, flushed, must be in the file.
        for (std::uint64_t pg = 0; pg < pages; ++pg)
            if (in_w(pg)) std::memset(p + pg * k_page, k_final, 64);
        auto f = c.value()->flush(r.value());
        if (!f && failure.empty()) failure = "last flush: " + f.error().message;
        auto u = c.value()->unmap(r.value());
        if (!u && failure.empty()) failure = "unmap: " + u.error().message;
        write_text(dir.file("writer.txt"), std::to_string(rounds) + " rounds, " + std::to_string(flushes) +
                                               " flushes, " + (failure.empty() ? "no failure" : failure));
        return failure.empty() ? 0 : 1;
    });
    ::close(reader_stop[0]);
    ::close(writer_stop[0]);
    struct Stop {  // the children stop however this ends
        int fd;
        ~Stop() { ::close(fd); }
    } stop_reader{reader_stop[1]}, stop_writer{writer_stop[1]};

    // The hostile client: a Shared map of the file, and the cache's read-write descriptor.
    // Its view is mapped and registered as libclient does it, so that the daemon can
    // write-protect it (a view that cannot be protected keeps pages dirty: the subject of
    // the "[unregister]" tests); it never touches it, and works through the descriptor.
    Reservation mem(whole);  // before the client: gone after it (see RawShared)
    auto hostile = std::make_unique<RawShared>(daemon);
    util::UniqueFd file(::open(dir.file("data").c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(file);
    auto got = hostile->map(mem.start(), whole, file.get(), proto::k_map_cache | proto::k_map_shared);
    util::UniqueFd cache = cache_of(got);
    REQUIRE(::mmap(mem.addr, whole, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, cache.get(), 0) == mem.addr);
    {
        uffdio_register reg{{mem.start(), whole},
                            UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, 0};
        REQUIRE(::ioctl(hostile->uffd.get(), UFFDIO_REGISTER, &reg) == 0);
    }
    const int cfd = cache.get();
    REQUIRE((::fcntl(cfd, F_GETFL) & O_ACCMODE) == O_RDWR);
    struct stat st{};
    REQUIRE(::fstat(cfd, &st) == 0);
    const auto span = static_cast<std::uint64_t>(st.st_size);
    REQUIRE(span > whole + k_page);

    const std::vector<std::uint8_t> junk(k_page, k_hostile);
    std::mt19937_64 rng(131);
    std::uint64_t punches = 0, into_holes = 0, over_loaded = 0, past_end = 0, failed_writes = 0;
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < race_time) {
        // Holes over the whole cache (everything the memfd spans).
        REQUIRE(::fallocate(cfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(span)) == 0);
        ++punches;
        for (int k = 0; k < 64; ++k) {
            // Into a hole...
            const std::uint64_t pg = rng() % pages;
            if (::lseek(cfd, static_cast<off_t>(pg * k_page), SEEK_DATA) != static_cast<off_t>(pg * k_page)) {
                failed_writes += ::pwrite(cfd, junk.data(), k_page, static_cast<off_t>(pg * k_page)) != static_cast<ssize_t>(k_page);
                ++into_holes;
            }
            // ...and over a page the cache holds (loaded again since the punch).
            const off_t data = ::lseek(cfd, static_cast<off_t>(rng() % pages * k_page), SEEK_DATA);
            if (data >= 0 && static_cast<std::uint64_t>(data) < whole) {
                failed_writes += ::pwrite(cfd, junk.data(), k_page, data / static_cast<off_t>(k_page) * static_cast<off_t>(k_page)) != static_cast<ssize_t>(k_page);
                ++over_loaded;
            }
        }
        // Past the file's end: the rest of its last page, and pages beyond it.
        failed_writes += ::pwrite(cfd, junk.data(), whole - size, static_cast<off_t>(size)) != static_cast<ssize_t>(whole - size);
        const std::uint64_t beyond = whole + rng() % ((span - whole) / k_page) * k_page;
        failed_writes += ::pwrite(cfd, junk.data(), k_page, static_cast<off_t>(beyond)) != static_cast<ssize_t>(k_page);
        past_end += 2;
        std::this_thread::sleep_for(1ms);
    }
    // Done: holes everywhere one last time (nothing of the hostile client's stays in the cache).
    REQUIRE(::fallocate(cfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(span)) == 0);
    INFO("hostile: " << punches << " punches of the whole cache, " << into_holes << " pages written into holes, "
                     << over_loaded << " over loaded pages, " << past_end << " past the end, " << failed_writes
                     << " writes failed");
    CHECK(failed_writes == 0);
    CHECK(daemon.alive());
    hostile->client.send(proto::Ping{7});
    hostile->client.expect<proto::Pong>();

    // The reader stops first, then the writer writes once more and flushes.
    REQUIRE(::write(stop_reader.fd, "x", 1) == 1);
    const int reader_status = wait_child(reader, 60s);
    INFO("reader: " << describe_status(reader_status) << ": " << slurp(dir.file("reader.txt")));
    INFO("the daemon's warnings: " << warnings(daemon));
    CHECK(exited_with(reader_status, 0));
    REQUIRE(::write(stop_writer.fd, "x", 1) == 1);
    const int writer_status = wait_child(writer, 60s);
    INFO("writer: " << describe_status(writer_status) << ": " << slurp(dir.file("writer.txt")));
    CHECK(exited_with(writer_status, 0));

    // The daemon answers; the file keeps its size.
    REQUIRE(daemon.alive());
    const auto s = daemon.status();
    INFO(figures(s));
    struct stat fst{};
    REQUIRE(::stat(dir.file("data").c_str(), &fst) == 0);
    CHECK(static_cast<std::uint64_t>(fst.st_size) == size);
    // The file: the writer's last write in [0, 64) of W; elsewhere in W the file's byte, a
    // zero or k_hostile (see above); outside W the file's own bytes, untouched.
    const auto file_now = read_file(dir.file("data"));
    REQUIRE(file_now.size() == size);
    std::uint64_t wrong_final = 0, wrong_w = 0, wrong_other = 0;
    std::string first_wrong;
    for (std::uint64_t off = 0; off < size; ++off) {
        const std::uint64_t pg = off / k_page, i = off % k_page;
        const std::uint8_t b = file_now[off];
        bool ok;
        if (in_w(pg) && i < 64) {
            ok = b == k_final;
            wrong_final += !ok;
        } else if (in_w(pg)) {
            ok = b == want[off] || b == 0 || b == k_hostile;
            wrong_w += !ok;
        } else {
            ok = b == want[off];
            wrong_other += !ok;
        }
        if (!ok && first_wrong.empty()) first_wrong = "offset " + std::to_string(off) + ": " + std::to_string(b);
    }
    INFO("first wrong byte of the file: " << first_wrong);
    CHECK(wrong_final == 0);
    CHECK(wrong_w == 0);
    CHECK(wrong_other == 0);
    // A fresh reader, now that the hostile client stopped: the file's bytes, whatever the
    // cache held (the hostile client punched it all at the end; the daemon did not know).
    auto fresh = daemon.connect("fresh reader");
    auto fr = fresh->map_file(dir.file("data"), {0, whole, Access::ReadOnly});
    REQUIRE(fr.ok());
    const auto* fp = static_cast<const std::uint8_t*>(fr->addr);
    std::uint64_t differ = 0;
    for (std::uint64_t pg = 0; pg < pages; ++pg)
        differ += std::memcmp(fp + pg * k_page, file_now.data() + pg * k_page,
                              std::min<std::uint64_t>(k_page, size - pg * k_page)) != 0;
    CHECK(differ == 0);
    CHECK(daemon.alive());
    CHECK(daemon.status().cache_dirty_bytes == 0);
    // The hostile client goes (its view is unmapped at the end): nothing changes in the file.
    cache.reset();
    hostile.reset();
    REQUIRE(daemon.wait_until([](const auto& st2) { return st2.clients == 2; }));
    CHECK(daemon.status().cache_dirty_bytes == 0);
    CHECK((read_file(dir.file("data")) == file_now));
    CHECK(daemon.alive());
}

TEST_CASE("O_APPEND set on a Shared client's file descriptor after MAP does not move where write-back writes",
          "[cache][shared][hostile][append]")
{
    TempDir dir;
    const std::uint64_t size = 1 * k_mib;
    make_file(dir.file("data"), size, 141);
    auto model = read_file(dir.file("data"));
    Daemon daemon;
    // The hostile client maps first: the cache's write-back descriptor comes from its MAP.
    auto hostile = daemon.connect("hostile");
    util::UniqueFd fd(::open(dir.file("data").c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(fd);
    MapOptions o;
    o.length = size;
    o.access = Access::Shared;
    o.tracking = Tracking::UffdWp;
    auto rh = hostile->map_fd(fd.get(), o);
    REQUIRE(rh.ok());
    REQUIRE(rh->tracking == Tracking::UffdWp);
    // Now O_APPEND on its descriptor, which the daemon received a copy of (the same open
    // file description: its flags are the daemon's copy's flags too).
    REQUIRE(::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_APPEND) == 0);
    REQUIRE((::fcntl(fd.get(), F_GETFL) & O_APPEND) != 0);

    // Another Shared client writes page 5 and flushes: page 5 of the file, and no growth.
    auto honest = daemon.connect("honest");
    auto rs = map_shared(*honest, dir.file("data"), size);
    auto* sp = static_cast<std::uint8_t*>(rs.addr);
    std::memset(sp + 5 * k_page, 0x55, k_page);
    std::memset(model.data() + 5 * k_page, 0x55, k_page);
    auto f = honest->flush(rs);
    REQUIRE(f.ok());
    CHECK(f->pages == 1);
    struct stat st{};
    REQUIRE(::stat(dir.file("data").c_str(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) == size);
    auto file = read_file(dir.file("data"));
    REQUIRE(file.size() >= size);
    CHECK(std::memcmp(file.data() + 5 * k_page, model.data() + 5 * k_page, k_page) == 0);
    CHECK(std::memcmp(file.data(), model.data(), size) == 0);

    // The O_APPEND client's own write, flushed, lands in place too.
    auto* hp = static_cast<std::uint8_t*>(rh->addr);
    CHECK(hp[5 * k_page] == 0x55);  // the same cache
    std::memset(hp + 9 * k_page + 100, 0x99, 200);
    std::memset(model.data() + 9 * k_page + 100, 0x99, 200);
    f = hostile->flush(rh.value());
    REQUIRE(f.ok());
    CHECK(f->pages == 1);
    REQUIRE(hostile->unmap(rh.value()).ok());
    REQUIRE(honest->unmap(rs).ok());
    REQUIRE(::stat(dir.file("data").c_str(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) == size);
    file = read_file(dir.file("data"));
    REQUIRE(file.size() >= size);
    CHECK(std::memcmp(file.data(), model.data(), size) == 0);
    CHECK(daemon.alive());
}

// A Shared client that takes its view out of its userfaultfd: the daemon can no longer
// write-protect it, so it cannot know that the pages are clean after a write-back (the
// client could write them unseen): docs/writes.md, "a view it cannot protect ... leaves the
// page dirty for the next write-back, and the page is still written". The honest client's
// writes reach the file all the same; the pages in the hostile view's range stay dirty
// until the hostile client goes.
TEST_CASE("a Shared client that unregisters its view from its userfaultfd does not keep another's writes from the file",
          "[cache][shared][hostile][unregister]")
{
    TempDir dir;
    const std::uint64_t size = 2 * k_mib, pages = size / k_page;
    const std::uint64_t hostile_pages = pages / 2;  // the hostile view: the first half of the file
    make_file(dir.file("data"), size, 151);
    make_file(dir.file("other"), 256 * 1024, 152);
    auto model = read_file(dir.file("data"));
    const auto other = read_file(dir.file("other"));
    Daemon daemon;
    auto honest = daemon.connect("honest");
    auto bystander = daemon.connect("bystander");
    auto rs = map_shared(*honest, dir.file("data"), size);
    auto* sp = static_cast<std::uint8_t*>(rs.addr);

    std::string pagerctl_out;
    long long dirty_registered = -1, dirty_after = -1, pagerctl_registered = -1, pagerctl_after = -1;
    std::uint64_t second_flush_pages = 0;
    {
        // The hostile client: a Shared view of the first half, mapped and registered as
        // libclient would, its pages touched (mapped write-protected by the daemon)...
        Reservation mem(hostile_pages * k_page);  // before the client: gone after it (see RawShared)
        RawShared hostile(daemon);
        util::UniqueFd fd(::open(dir.file("data").c_str(), O_RDWR | O_CLOEXEC));
        REQUIRE(fd);
        auto got = hostile.map(mem.start(), mem.length, fd.get(), proto::k_map_cache | proto::k_map_shared);
        util::UniqueFd cache = cache_of(got);
        REQUIRE(::mmap(mem.addr, mem.length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, cache.get(), 0) == mem.addr);
        uffdio_register reg{{mem.start(), mem.length},
                            UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, 0};
        REQUIRE(::ioctl(hostile.uffd.get(), UFFDIO_REGISTER, &reg) == 0);
        auto* hp = static_cast<std::uint8_t*>(mem.addr);
        for (std::uint64_t pg = 0; pg < hostile_pages; ++pg)
            REQUIRE(*static_cast<volatile std::uint8_t*>(hp + pg * k_page + 1) == model[pg * k_page + 1]);
        // ...then the view leaves the userfaultfd: no more faults, no more write-protection.
        uffdio_range range{mem.start(), mem.length};
        REQUIRE(::ioctl(hostile.uffd.get(), UFFDIO_UNREGISTER, &range) == 0);
        // Its own writes now go into the cache unseen (to pages nobody else writes).
        for (std::uint64_t pg = 2; pg < hostile_pages; pg += 4) hp[pg * k_page + 2000] = 0xEE;

        // The honest client writes every 4th page of the whole file (single-page runs) and flushes.
        std::uint64_t written = 0, written_in_hostile = 0;
        for (std::uint64_t pg = 0; pg < pages; pg += 4, ++written) {
            std::memset(sp + pg * k_page + 8, 0x5C, 32);
            std::memset(model.data() + pg * k_page + 8, 0x5C, 32);
            written_in_hostile += pg < hostile_pages;
        }
        CHECK(hp[0 + 8] == 0x5C);  // the hostile view shows them: the same pages
        auto f = honest->flush(rs);
        REQUIRE(f.ok());
        CHECK(f->pages == written);
        auto file = read_file(dir.file("data"));
        std::uint64_t missing = 0;
        for (std::uint64_t pg = 0; pg < pages; pg += 4)
            missing += std::memcmp(file.data() + pg * k_page + 8, model.data() + pg * k_page + 8, 32) != 0;
        CHECK(missing == 0);

        // While the hostile view exists: the pages of its range stay dirty (each write-back
        // writes them again); the others are clean.
        const auto s = daemon.status();
        dirty_registered = static_cast<long long>(s.cache_dirty_bytes);
        pagerctl_registered = pagerctl_dirty_bytes(daemon, pagerctl_out);
        INFO(figures(s) << "\npagerctl status:\n" << pagerctl_out);
        CHECK(s.cache_dirty_bytes == written_in_hostile * k_page);
        CHECK(pagerctl_registered == dirty_registered);
        f = honest->flush(rs);  // nothing new written: the pages it could not clean, again
        REQUIRE(f.ok());
        second_flush_pages = f->pages;
        CHECK(f->pages == written_in_hostile);
        CHECK(daemon.status().cache_dirty_bytes == written_in_hostile * k_page);

        // Healthy meanwhile: a ping, another file read whole, more writes and flushes.
        hostile.client.send(proto::Ping{9});
        hostile.client.expect<proto::Pong>();
        auto ro = bystander->map_file(dir.file("other"), {0, other.size(), Access::ReadOnly});
        REQUIRE(ro.ok());
        CHECK(std::memcmp(ro->addr, other.data(), other.size()) == 0);
        sp[(pages - 1) * k_page + 5] = 0x11;
        model[(pages - 1) * k_page + 5] = 0x11;
        sp[1 * k_page + 5] = 0x22;
        model[1 * k_page + 5] = 0x22;
        f = honest->flush(rs);
        REQUIRE(f.ok());
        file = read_file(dir.file("data"));
        CHECK(file[(pages - 1) * k_page + 5] == 0x11);
        CHECK(file[1 * k_page + 5] == 0x22);
    }  // the hostile client goes: its connection closes (then its view is unmapped)
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 3; }));
    CHECK(daemon.wait_until([](const auto& s) { return s.cache_dirty_bytes == 0; }));
    dirty_after = static_cast<long long>(daemon.status().cache_dirty_bytes);
    pagerctl_after = pagerctl_dirty_bytes(daemon, pagerctl_out);
    CHECK(pagerctl_after == 0);
    WARN("cache_dirty_bytes with the unregistered hostile view: status() " << dirty_registered << ", pagerctl "
                                                                           << pagerctl_registered
                                                                           << "; a flush with nothing new wrote "
                                                                           << second_flush_pages
                                                                           << " page(s) again; after the hostile "
                                                                              "client left: status() "
                                                                           << dirty_after << ", pagerctl "
                                                                           << pagerctl_after);
    // The honest client's writes are in the file, and stay there.
    auto f = honest->flush(rs);
    REQUIRE(f.ok());
    const auto file = read_file(dir.file("data"));
    std::uint64_t missing = 0;
    for (std::uint64_t pg = 0; pg < pages; pg += 4)
        missing += std::memcmp(file.data() + pg * k_page + 8, model.data() + pg * k_page + 8, 32) != 0;
    CHECK(missing == 0);
    CHECK(file[(pages - 1) * k_page + 5] == 0x11);
    CHECK(file[1 * k_page + 5] == 0x22);
    REQUIRE(honest->unmap(rs).ok());
    CHECK(daemon.alive());
}

// The same unprotectable view under a small budget. Writers wait while the dirty pages of
// all caches exceed a quarter of the budget (daemon/faults.cpp, throttled_write), until
// write-back brings them under it, at most a second. Pages in a view the daemon cannot
// protect never become clean: a client that keeps such a view, and an honest client's
// dirty pages under it, must not hold every other writer of the daemon, of any file, to a
// second per first write from then on.
//
// Measured before the fix: the victim, a writer of another file, waited about a second
// for each page it wrote (~10 s for 10 pages). Pages some view could not be protected for
// no longer count against the limit (Cache::collect, m_stuck).
TEST_CASE("a Shared client whose view cannot be protected does not throttle the writers of other files",
          "[cache][shared][hostile][unregister][throttle]")
{
    TempDir dir;
    const std::uint64_t budget = 1 * k_mib, limit_pages = budget / 4 / k_page;  // 64 pages
    const std::uint64_t size = 2 * k_mib, victim_size = 1 * k_mib;
    make_file(dir.file("data"), size, 161);
    make_file(dir.file("victim"), victim_size, 162);
    auto model = read_file(dir.file("data"));
    auto victim_model = read_file(dir.file("victim"));
    Daemon daemon({"--memory-max", std::to_string(budget)});
    auto honest = daemon.connect("honest");
    auto rs = map_shared(*honest, dir.file("data"), size);
    auto* sp = static_cast<std::uint8_t*>(rs.addr);
    auto victim = daemon.connect("victim");
    auto rv = map_shared(*victim, dir.file("victim"), victim_size);
    auto* vp = static_cast<std::uint8_t*>(rv.addr);
    // The honest client dirties just over the limit, every other page (single-page runs).
    const std::uint64_t dirty_pages = limit_pages + 1;
    const auto write_honest = [&](std::uint8_t v) {
        for (std::uint64_t k = 0; k < dirty_pages; ++k) {
            sp[2 * k * k_page + 16] = v;
            model[2 * k * k_page + 16] = v;
        }
    };
    // The victim's first writes to 10 clean pages of its own file; how long they take.
    std::uint64_t victim_round = 0;
    const auto victim_writes = [&] {
        const auto t0 = std::chrono::steady_clock::now();
        const auto v = static_cast<std::uint8_t>(0x30 + victim_round);
        for (std::uint64_t pg = 0; pg < 10; ++pg) {
            vp[(victim_round * 10 + pg) * k_page + 7] = v;
            victim_model[(victim_round * 10 + pg) * k_page + 7] = v;
        }
        ++victim_round;
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };

    // Control: without the hostile view, the honest client's dirty pages are written back
    // and the victim writes at once.
    write_honest(0x41);
    REQUIRE(honest->flush(rs).ok());
    CHECK(daemon.status().cache_dirty_bytes == 0);
    const double control = victim_writes();
    REQUIRE(victim->flush(rv).ok());
    CHECK(control < 1.0);

    Reservation mem(size);
    RawShared hostile(daemon);  // maps the file Shared, and registers no view at all
    util::UniqueFd fd(::open(dir.file("data").c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(fd);
    auto got = hostile.map(mem.start(), size, fd.get(), proto::k_map_cache | proto::k_map_shared);
    util::UniqueFd cache = cache_of(got);
    write_honest(0x42);
    auto f = honest->flush(rs);
    REQUIRE(f.ok());
    const auto before = daemon.status();
    CHECK(before.cache_dirty_bytes == dirty_pages * k_page);  // unprotectable: dirty still
    const double slowed = victim_writes();
    const auto after = daemon.status();
    WARN("the victim's 10 first writes took " << control << " s without the hostile view, " << slowed
                                              << " s with it (" << dirty_pages << " pages kept dirty, limit "
                                              << limit_pages << "); write-backs meanwhile: "
                                              << after.cache_writebacks - before.cache_writebacks << " page(s)");
    CHECK(slowed < 2.0);
    // Whatever the wait: every write reaches the files.
    REQUIRE(victim->flush(rv).ok());
    REQUIRE(honest->flush(rs).ok());
    CHECK((read_file(dir.file("victim")) == victim_model));
    CHECK((read_file(dir.file("data")) == model));
    CHECK(daemon.alive());
}
