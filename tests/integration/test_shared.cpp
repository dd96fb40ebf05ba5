// Shared regions: writes reach the file on flush, under races, and when the client dies,
// with each of the three write-tracking strategies.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>

#include "harness.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Tracking;

namespace {

constexpr std::uint64_t k_page = 4096;

Tracking any_tracking()
{
    return GENERATE(Tracking::UffdWp, Tracking::Sigsegv, Tracking::Async);
}

}  // namespace

TEST_CASE("write, flush: the file holds the bytes, and nothing else changed", "[shared]")
{
    const Tracking tracking = any_tracking();
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    const std::uint64_t size = 2 * 1024 * 1024 + 1000;  // the last page is partial
    make_file(dir.file("data"), size, 101);
    auto model = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    const std::uint64_t length = (size + k_page - 1) / k_page * k_page;
    auto r = conn->map_file(dir.file("data"), {0, length, Access::Shared, tracking});
    REQUIRE(r.ok());
    CHECK(r->tracking == tracking);
    auto* p = static_cast<std::uint8_t*>(r->addr);
    CHECK(p[5] == model[5]);  // reads see the file
    // A read first, then a write; a first touch that is a write; the partial last page.
    p[10] = 0xAA;
    p[300000] = 0xBB;
    std::memset(p + 1000000, 0xCC, 20000);
    p[size - 1] = 0xDD;
    p[size] = 0xEE;  // past EOF in the last page: like MAP_SHARED, never reaches the file
    for (std::uint64_t i : {10ul, 300000ul, size - 1}) model[i] = p[i];
    std::memset(model.data() + 1000000, 0xCC, 20000);
    auto flushed = conn->flush(r.value());
    REQUIRE(flushed.ok());
    CHECK(flushed->pages == 1 + 1 + 6 + 1);  // 20000 bytes at 1000000 touch pages 244..249
    CHECK(read_file(dir.file("data")) == model);
    // Nothing written since: nothing to flush.
    auto again = conn->flush(r.value());
    REQUIRE(again.ok());
    CHECK(again->pages == 0);
    // Written again after the flush: dirty again.
    p[10] = 0x11;
    model[10] = 0x11;
    auto third = conn->flush_all();
    REQUIRE(third.ok());
    CHECK(third->pages == 1);
    CHECK(read_file(dir.file("data")) == model);
    REQUIRE(conn->unmap(r.value()).ok());
    CHECK(read_file(dir.file("data")) == model);
}

TEST_CASE("threads writing while others flush lose no update", "[shared][race]")
{
    const Tracking tracking = any_tracking();
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    const std::uint64_t pages = 512;
    make_file(dir.file("data"), pages * k_page, 102);
    Daemon daemon;
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("data"), {0, pages * k_page, Access::Shared, tracking});
    REQUIRE(r.ok());
    auto* p = static_cast<std::uint8_t*>(r->addr);
    // Model: writer w owns the pages pg with pg % k_writers == w, no other thread writes
    // them; round after round it writes the round's number into some of its pages (a
    // stride of 3 to 7 of its own pages, varying with the round), so the last value written
    // to each page is what the file must end with. last[pg] is written by the page's owner
    // only, and read after the joins.
    constexpr unsigned k_writers = 3;
    std::vector<std::uint32_t> last(pages, 0);
    std::atomic<bool> stop{false};
    std::vector<std::thread> writers;
    for (unsigned w = 0; w < k_writers; ++w)
        writers.emplace_back([&, w] {
            for (std::uint32_t round = 1; round <= 300; ++round)
                for (std::uint64_t pg = w; pg < pages; pg += k_writers * (3 + round % 5)) {
                    std::memcpy(p + pg * k_page + 64, &round, sizeof round);
                    last[pg] = round;
                }
        });
    std::thread flusher([&] {
        while (!stop) REQUIRE(conn->flush(r.value()).ok());
    });
    for (auto& t : writers) t.join();
    stop = true;
    flusher.join();
    REQUIRE(conn->flush(r.value()).ok());
    const auto file = read_file(dir.file("data"));
    std::uint64_t checked = 0;
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        if (!last[pg]) continue;
        std::uint32_t v;
        std::memcpy(&v, file.data() + pg * k_page + 64, sizeof v);
        INFO("page " << pg);
        REQUIRE(v == last[pg]);
        ++checked;
    }
    CHECK(checked > pages / 2);
    CHECK(std::memcmp(file.data(), p, pages * k_page) == 0);
}

// Async tracking keeps no dirty bits a dead client leaves behind: test_hostile.cpp checks
// what it keeps (its flushed writes) and that it never writes pages it did not write.
TEST_CASE("a client SIGKILLed with dirty pages: the daemon writes them to the file", "[shared][death]")
{
    const Tracking tracking = GENERATE(Tracking::UffdWp, Tracking::Sigsegv);
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    const std::uint64_t size = 4 * 1024 * 1024;
    make_file(dir.file("data"), size, 103);
    auto model = read_file(dir.file("data"));
    for (std::uint64_t off = 4096 * 7 + 3; off < size; off += 4096 * 13) model[off] = static_cast<std::uint8_t>(off >> 12);
    Daemon daemon;
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        reset_fatal_signals();
        auto c = libclient::Connection::connect({daemon.socket(), "doomed"});
        if (!c) _exit(3);
        auto r = c.value()->map_file(dir.file("data"), {0, size, Access::Shared, tracking});
        if (!r) _exit(4);
        auto* p = static_cast<std::uint8_t*>(r->addr);
        for (std::uint64_t off = 4096 * 7 + 3; off < size; off += 4096 * 13) p[off] = static_cast<std::uint8_t>(off >> 12);
        (void)!::write(pipefd[1], "x", 1);
        for (;;) ::pause();
    }
    char x;
    REQUIRE(::read(pipefd[0], &x, 1) == 1);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0; }));
    REQUIRE(daemon.wait_log("client gone: wrote back"));
    CHECK((read_file(dir.file("data")) == model));
}

TEST_CASE("pagerctl write copies stdin into the file through a shared region", "[shared][pagerctl]")
{
    const Tracking tracking = any_tracking();
    TempDir dir;
    make_file(dir.file("data"), 100000, 104);
    auto model = read_file(dir.file("data"));
    Daemon daemon;
    std::ofstream(dir.file("input")) << "written through pagerd";
    auto r = run_command({"/bin/sh", "-c",
                          std::string(PAGERCTL_BINARY) + " --socket " + daemon.socket() + " write " + dir.file("data") +
                              " --offset 50000 --tracking " + libclient::tracking_name(tracking) + " < " + dir.file("input")});
    INFO(r.err);
    REQUIRE(exited_with(r.status, 0));
    CHECK_THAT(r.out, Catch::Contains("flushed 1 pages, 4096 bytes"));
    std::memcpy(model.data() + 50000, "written through pagerd", 22);
    CHECK(read_file(dir.file("data")) == model);
    auto past = run_command({"/bin/sh", "-c", std::string(PAGERCTL_BINARY) + " --socket " + daemon.socket() +
                                                  " write " + dir.file("data") + " --offset 99990 < " + dir.file("input")});
    CHECK(exited_with(past.status, 1));
    CHECK_THAT(past.err, Catch::Contains("past the end"));
}

TEST_CASE("pagerctl status lists each region with its tracking and dirty pages", "[shared][status]")
{
    TempDir dir;
    make_file(dir.file("data"), 1024 * 1024, 105);
    Daemon daemon;
    auto conn = daemon.connect();
    auto a = conn->map_file(dir.file("data"), {0, 65536, Access::Shared, Tracking::Sigsegv});
    auto b = conn->map_file(dir.file("data"), {65536, 65536, Access::Shared, Tracking::UffdWp});
    auto c = conn->map_file(dir.file("data"), {131072, 65536, Access::Shared, Tracking::Async});
    auto d = conn->map_file(dir.file("data"), {0, 65536, Access::ReadOnly});
    REQUIRE((a.ok() && b.ok() && c.ok() && d.ok()));
    static_cast<std::uint8_t*>(a->addr)[0] = 1;
    static_cast<std::uint8_t*>(a->addr)[8192] = 1;
    static_cast<std::uint8_t*>(b->addr)[0] = 1;
    auto json = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status", "--json"});
    REQUIRE(exited_with(json.status, 0));
    CHECK_THAT(json.out, Catch::Contains("\"tracking\":\"sigsegv\",\"dirty_pages\":2"));
    CHECK_THAT(json.out, Catch::Contains("\"tracking\":\"uffd-wp\",\"dirty_pages\":1"));
    CHECK_THAT(json.out, Catch::Contains("\"tracking\":\"async\""));
    CHECK_THAT(json.out, Catch::Contains("\"access\":\"read-only\",\"tracking\":\"none\""));
    auto text = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status"});
    CHECK_THAT(text.out, Catch::Contains("sigsegv") && Catch::Contains("uffd-wp") && Catch::Contains("async"));
    auto list = conn->regions();
    REQUIRE(list.ok());
    CHECK(list->size() == 4);
}

TEST_CASE("background write-back flushes without being asked", "[shared][background]")
{
    TempDir dir;
    make_file(dir.file("data"), 65536, 106);
    Daemon daemon;
    libclient::ConnectOptions o{daemon.socket(), "background"};
    o.writeback_interval_ms = 50;
    auto conn = libclient::Connection::connect(o);
    REQUIRE(conn.ok());
    auto r = conn.value()->map_file(dir.file("data"), {0, 65536, Access::Shared});
    REQUIRE(r.ok());
    std::memcpy(static_cast<char*>(r->addr) + 4000, "background", 10);
    bool seen = false;
    for (int i = 0; i < 200 && !seen; ++i) {
        std::this_thread::sleep_for(10ms);
        const auto f = read_file(dir.file("data"));
        seen = std::memcmp(f.data() + 4000, "background", 10) == 0;
    }
    CHECK(seen);
}

TEST_CASE("a Shared region needs its file open for writing and private regions never write back", "[shared][errors]")
{
    TempDir dir;
    make_file(dir.file("data"), 65536, 107);
    const auto model = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    const int ro = ::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC);
    auto r = conn->map_fd(ro, {0, 65536, Access::Shared});
    ::close(ro);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("O_RDWR"));
    auto tracked_private = conn->map_file(dir.file("data"), {0, 65536, Access::PrivateWritable, Tracking::Sigsegv});
    REQUIRE_FALSE(tracked_private.ok());
    auto priv = conn->map_file(dir.file("data"), {0, 65536, Access::PrivateWritable});
    REQUIRE(priv.ok());
    std::memset(priv->addr, 0, 65536);
    auto f = conn->flush(priv.value());
    REQUIRE(f.ok());
    CHECK(f->pages == 0);
    REQUIRE(conn->unmap(priv.value()).ok());
    CHECK(read_file(dir.file("data")) == model);
}

TEST_CASE("only root and the daemon's user list every client's regions", "[shared][access]")
{
    TempDir dir;
    make_file(dir.file("data"), 65536, 108);
    ::chmod(dir.path().c_str(), 0755);
    ::chmod(dir.file("data").c_str(), 0644);
    Daemon daemon;
    const std::string sock_dir = daemon.socket().substr(0, daemon.socket().rfind('/'));
    ::chmod(sock_dir.c_str(), 0755);  // let another user reach the socket
    auto root = daemon.connect();
    auto mine = root->map_file(dir.file("data"), {0, 65536, Access::ReadOnly});
    REQUIRE(mine.ok());
    // Another user (nobody) sees only its own regions: none of root's. A program of its own
    // that drops to nobody, connects, maps and lists (not a forked child: this process
    // runs the thread of `root`'s connection, and under ThreadSanitizer a child forked now
    // could not start the thread of a connection of its own).
    const auto child = run_command({PAGERD_TEST_CHILD, "regions-as-nobody", daemon.socket(), dir.file("data")});
    INFO("child status " << child.status << ": " << child.err);
    CHECK(exited_with(child.status, 0));
    auto all = root->regions();
    REQUIRE(all.ok());
    CHECK(all->size() == 1);  // the child's region went with the child
}

TEST_CASE("a written page whose mapping MADV_DONTNEED dropped is still flushed, a page only read is not",
          "[shared][madvise]")
{
    const Tracking tracking = any_tracking();
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 107);
    auto model = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("data"), {0, size, Access::Shared, tracking});
    REQUIRE(r.ok());
    auto* p = static_cast<std::uint8_t*>(r->addr);
    std::memset(p + 8 * k_page, 0x77, k_page);
    std::memset(model.data() + 8 * k_page, 0x77, k_page);
    CHECK(p[20 * k_page] == model[20 * k_page]);  // loaded, only read
    REQUIRE(::madvise(p + 8 * k_page, k_page, MADV_DONTNEED) == 0);  // the memfd keeps the page
    auto f = conn->flush(r.value());
    REQUIRE(f.ok());
    CHECK(f->pages == 1);
    CHECK((read_file(dir.file("data")) == model));
    CHECK(p[8 * k_page] == 0x77);
}
