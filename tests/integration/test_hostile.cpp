// A hostile local user against the daemon: memory it shares and then shrinks, replies it
// will not take, and a client killed while others write the same file. The daemon must
// live through all of it and never write bytes a client did not write.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <variant>

#include "harness.hpp"
#include "raw_client.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Tracking;

namespace {

constexpr std::uint64_t k_page = 4096;

// A descriptor of this process's "pagerd-region" memfd (libclient's Shared region),
// opened read-write through one of its mappings, as any code in the process could.
util::UniqueFd region_memfd()
{
    std::ifstream maps("/proc/self/maps");
    for (std::string line; std::getline(maps, line);) {
        if (line.find("/memfd:pagerd-region") == std::string::npos) continue;
        const std::string range = line.substr(0, line.find(' '));
        return util::UniqueFd(::open(("/proc/self/map_files/" + range).c_str(), O_RDWR | O_CLOEXEC));
    }
    return util::UniqueFd();
}

bool pagerctl_status_works(const Daemon& daemon)
{
    auto r = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status"});
    return exited_with(r.status, 0);
}

}  // namespace

TEST_CASE("SHARED_MAP refuses a memfd that could shrink under the daemon, and shrinking it then harms nothing",
          "[hostile][seal]")
{
    TempDir dir;
    make_file(dir.file("data"), 1024 * 1024, 41);
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    const std::uint64_t length = 256 * 1024;
    const std::uint64_t need = length + k_page;  // pages, then the bitmap (one page)
    {
        RawClient c(daemon.socket());
        c.hello();
        auto uffd = make_uffd();
        c.send(proto::RegisterUffd{UFFD_FEATURE_EVENT_UNMAP, 0}, {uffd.get()});
        c.expect<proto::Ok>();
        util::UniqueFd file(::open(dir.file("data").c_str(), O_RDWR | O_CLOEXEC));
        REQUIRE(file);
        const std::string how = GENERATE(std::string("unsealed"), std::string("shrink seal only"),
                                         std::string("write seal"));
        INFO(how);
        util::UniqueFd memfd(::memfd_create("hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING));
        REQUIRE(memfd);
        REQUIRE(::ftruncate(memfd.get(), static_cast<off_t>(need)) == 0);
        if (how == "shrink seal only") REQUIRE(::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK) == 0);
        if (how == "write seal") REQUIRE(::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_WRITE | F_SEAL_SEAL) == 0);
        void* mem = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, memfd.get(), 0);
        REQUIRE(mem != MAP_FAILED);
        uffdio_register reg{{reinterpret_cast<std::uint64_t>(mem), length}, UFFDIO_REGISTER_MODE_MISSING, 0};
        if (how != "write seal") REQUIRE(::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) == 0);
        c.send(proto::MapShared{reg.range.start, length, 0, proto::Tracking::SEGV, proto::Prefetch::NONE},
               {file.get(), memfd.get()});
        const auto err = c.expect_error(proto::ErrorCode::BAD_DESCRIPTOR);
        CHECK_THAT(err.text, Catch::Contains(how == "write seal" ? "writable" : "F_SEAL_SHRINK"));
        // What the hostile client does next: shrink it, then ask for everything that
        // would read the memfd's bitmap.
        if (how == "unsealed") REQUIRE(::ftruncate(memfd.get(), 0) == 0);
        c.send(proto::Flush{0});
        const auto flushed = c.expect<proto::Flushed>();
        CHECK(flushed.pages == 0);
        c.send(proto::RegionsRequest{0});
        CHECK(c.expect<proto::RegionsReply>().total == 0);
        CHECK(pagerctl_status_works(daemon));
        uffd.reset();
        ::munmap(mem, length);
    }  // disconnect
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1; }));
    CHECK(daemon.alive());
    CHECK(daemon.wait_fds_at_most(fds_at_start));
}

TEST_CASE("a client cannot shrink its Shared region's memfd, and punching holes in it harms nothing",
          "[hostile][seal]")
{
    // (uffd-wp regions live in the daemon's page cache, not in a memfd of the client's:
    // test_cache_hostile.cpp has what a Shared client can do to the cache)
    const Tracking tracking = GENERATE(Tracking::Sigsegv, Tracking::Async);
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 42);
    const auto original = read_file(dir.file("data"));
    Daemon daemon;
    {
        // Flushes every 20 ms in the background: the daemon reads the bitmap all along.
        libclient::ConnectOptions o{daemon.socket(), "shrinker"};
        o.writeback_interval_ms = 20;
        auto conn = libclient::Connection::connect(o);
        REQUIRE(conn.ok());
        auto r = conn.value()->map_file(dir.file("data"), {0, size, Access::Shared, tracking});
        REQUIRE(r.ok());
        auto* p = static_cast<std::uint8_t*>(r->addr);
        for (std::uint64_t off = 0; off < size; off += 8 * k_page) p[off] ^= 0xff;  // dirty pages
        const auto memfd_owner = region_memfd();
        REQUIRE(memfd_owner);
        const int memfd = memfd_owner.get();
        CHECK(::ftruncate(memfd, 0) == -1);
        CHECK(errno == EPERM);
        // Holes are allowed: the pages and the bitmap read as zeros, the daemon survives.
        struct stat st{};
        REQUIRE(::fstat(memfd, &st) == 0);
        REQUIRE(::fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, st.st_size) == 0);
        std::this_thread::sleep_for(100ms);  // background flushes
        auto f = conn.value()->flush(r.value());
        CHECK(f.ok());
        CHECK(pagerctl_status_works(daemon));
        // The region faults its pages in again from the file.
        CHECK(p[k_page + 5] == original[k_page + 5]);
    }  // disconnect: the death write-back reads the bitmap too
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0; }));
    CHECK(daemon.alive());
    // The punched pages were never written back as zeros.
    const auto now = read_file(dir.file("data"));
    std::uint64_t zero_pages = 0;
    for (std::uint64_t off = 0; off < size; off += k_page)
        zero_pages += std::all_of(now.begin() + static_cast<long>(off), now.begin() + static_cast<long>(off + k_page),
                                  [](std::uint8_t b) { return b == 0; });
    CHECK(zero_pages == 0);
}

namespace {

// How many PONGs the daemon can queue toward a client that reads nothing: floods one
// connection until the daemon gives up on it, then counts what arrived.
unsigned pongs_that_fit(const Daemon& daemon)
{
    RawClient c(daemon.socket());
    c.hello();
    for (std::uint64_t i = 0; i < 2000; ++i) {
        const auto bytes = proto::encode(proto::Message{static_cast<std::uint32_t>(i + 2), proto::Ping{i}});
        if (::send(c.fd(), bytes.data(), bytes.size(), MSG_NOSIGNAL) < 0) break;
    }
    unsigned pongs = 0;
    while (auto m = c.receive()) pongs += std::holds_alternative<proto::Pong>(m->body);
    return pongs;
}

}  // namespace

TEST_CASE("a WAIT prefetch whose reply cannot be sent does not crash the daemon", "[hostile][prefetch]")
{
    TempDir dir;
    const std::uint64_t size = 32 * 1024 * 1024;
    make_file(dir.file("data"), size, 43);
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    const std::string how = GENERATE(std::string("closed at once"), std::string("replies not read"));
    INFO(how);
    const unsigned fit = how == "replies not read" ? pongs_that_fit(daemon) : 0;
    if (how == "replies not read") REQUIRE(fit > 10);
    for (int round = 0; round < 3; ++round) {
        RawClient c(daemon.socket());
        c.hello();
        auto uffd = make_uffd();
        c.send(proto::RegisterUffd{UFFD_FEATURE_EVENT_UNMAP, 0}, {uffd.get()});
        c.expect<proto::Ok>();
        util::UniqueFd file(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
        const std::uint64_t mem = registered_memory(uffd.get(), size);
        c.send(proto::Map{mem, size, 0, 0, proto::Prefetch::NONE}, {file.get()});
        c.expect<proto::Mapped>();
        if (how == "replies not read") {
            // Fill the daemon's send buffer toward us, then ask for a reply that will not fit.
            for (unsigned i = 0; i < fit; ++i) c.send(proto::Ping{i});
        }
        c.send(proto::PrefetchRequest{mem, size, proto::k_prefetch_wait});
        if (how == "closed at once") {
            c = RawClient(daemon.socket());  // closes the first connection
            c.hello();
        }
        // The prefetch ends, its reply fails, the daemon lets the client go.
        REQUIRE(daemon.wait_until([](const auto& s) { return s.regions == 0; }, 20s));
        REQUIRE(daemon.alive());
        uffd.reset();  // else munmap would wait for someone to read its UNMAP event
        ::munmap(reinterpret_cast<void*>(mem), size);
    }
    CHECK(daemon.alive());
    CHECK(daemon.wait_until([](const auto& s) { return s.clients == 1; }));
    CHECK(daemon.wait_fds_at_most(fds_at_start));
    if (how == "replies not read") CHECK_THAT(daemon.log(), Catch::Contains("does not read its replies"));
}

TEST_CASE("a SIGKILLed client's write-back writes only the pages it wrote", "[hostile][death][shared]")
{
    const Tracking tracking = GENERATE(Tracking::Auto, Tracking::UffdWp, Tracking::Sigsegv, Tracking::Async);
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    const std::uint64_t size = 4 * 1024 * 1024, mib = 1024 * 1024;
    make_file(dir.file("data"), size, 44);
    make_file(dir.file("other"), 65536, 45);
    auto model = read_file(dir.file("data"));
    // One worker: the bystander's flush below is served after the dead client's write-back
    // was queued, on the same writer, so when it returns that write-back is done.
    Daemon daemon({"--workers", "1"});
    const std::uint64_t flushed_page = 2 * mib, unflushed_page = 3 * mib;
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    // The victim is forked before this process connects: the bystander's connection runs a
    // thread, and under ThreadSanitizer a child forked after that could not start the
    // thread of its own connection.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        reset_fatal_signals();
        auto c = libclient::Connection::connect({daemon.socket(), "victim"});
        if (!c) _exit(3);
        auto r = c.value()->map_file(dir.file("data"), {0, size, Access::Shared, tracking});
        if (!r) _exit(4);
        auto* p = static_cast<std::uint8_t*>(r->addr);
        unsigned sum = 0;
        for (std::uint64_t off = 0; off < mib; off += k_page) sum += p[off];  // reads only
        std::memset(p + flushed_page, 0xA1, k_page);
        if (!c.value()->flush(r.value())) _exit(5);
        std::memset(p + unflushed_page, 0xB2, k_page);
        (void)!::write(pipefd[1], &sum, 1);
        for (;;) ::pause();
    }
    ::close(pipefd[1]);  // a victim that fails before it writes ends the read below
    auto bystander = daemon.connect("bystander");
    auto sync = bystander->map_file(dir.file("other"), {0, 65536, Access::Shared, Tracking::UffdWp});
    REQUIRE(sync.ok());
    char x;
    if (::read(pipefd[0], &x, 1) != 1) {
        int st = 0;
        ::waitpid(pid, &st, 0);
        FAIL("the victim ended before it was ready, wait status " << st);
    }
    // Another writer changes the range the victim only read.
    std::vector<std::uint8_t> fresh(mib);
    for (std::uint64_t i = 0; i < mib; ++i) fresh[i] = static_cast<std::uint8_t>(pattern_byte(i, 99) ^ 0x5a);
    {
        util::UniqueFd fd(::open(dir.file("data").c_str(), O_WRONLY | O_CLOEXEC));
        REQUIRE(::pwrite(fd.get(), fresh.data(), mib, 0) == static_cast<ssize_t>(mib));
    }
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
    ::close(pipefd[0]);
    REQUIRE(killed_by(st, SIGKILL));
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 2 && s.regions == 1; }));
    static_cast<std::uint8_t*>(sync->addr)[0] ^= 1;
    REQUIRE(bystander->flush(sync.value()).ok());  // after the victim's write-back

    const auto now = read_file(dir.file("data"));
    std::uint64_t clobbered = 0;
    for (std::uint64_t i = 0; i < mib; ++i) clobbered += now[i] != fresh[i];
    CHECK(clobbered == 0);  // the other writer's bytes survive
    std::memset(model.data() + flushed_page, 0xA1, k_page);
    CHECK(std::memcmp(now.data() + flushed_page, model.data() + flushed_page, k_page) == 0);
    if (tracking != Tracking::Async) {
        // Every write of a SIGKILLed client is kept, flushed or not (Auto included).
        std::memset(model.data() + unflushed_page, 0xB2, k_page);
        CHECK(std::memcmp(now.data() + unflushed_page, model.data() + unflushed_page, k_page) == 0);
    }
    // Nothing else changed.
    CHECK(std::memcmp(now.data() + mib, model.data() + mib, unflushed_page - mib) == 0);
}

TEST_CASE("Tracking::Auto picks a strategy that keeps a SIGKILLed client's writes", "[hostile][death][shared]")
{
    TempDir dir;
    make_file(dir.file("data"), 65536, 46);
    Daemon daemon;
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("data"), {0, 65536, Access::Shared});
    REQUIRE(r.ok());
    CHECK(r->tracking != Tracking::Async);
    CHECK(r->tracking == Tracking::UffdWp);  // this kernel has uffd-wp of shared memory
}
