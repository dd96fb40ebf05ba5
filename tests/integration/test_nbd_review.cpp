// NBD stores against what a review found: connection attempts to a server that never
// answers, write-back to a stalled server, one export under two spellings, and servers
// whose smallest request is larger than a page.
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "harness.hpp"
#include "nbdkit.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;

namespace {

long threads_of(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string key;
    while (in >> key) {
        if (key == "Threads:") {
            long n = 0;
            in >> n;
            return n;
        }
        in.ignore(4096, '\n');
    }
    return -1;
}

template <class Pred>
bool within(std::chrono::milliseconds limit, Pred pred)
{
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return true;
}

}  // namespace

TEST_CASE("connection attempts to a server that never answers end at the deadline, threads and sockets with them",
          "[nbd][review]")
{
    SilentServer silent;
    Daemon d({"--allow-store=" + silent.uri(), "--store-timeout-ms=300"});
    auto conn = d.connect();
    const long threads0 = threads_of(d.pid());
    const std::size_t fds0 = d.fd_count();
    libclient::MapOptions o;
    o.length = 1 << 20;
    for (int i = 0; i < 12; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        auto r = conn->map_store(silent.uri(), o);
        const auto took = std::chrono::steady_clock::now() - t0;
        REQUIRE_FALSE(r);
        CHECK(r.error().is_daemon(proto::ErrorCode::TIMEOUT));
        CHECK(took < std::chrono::seconds(3));
    }
    // Every attempt's thread and socket are gone (they used to stay, blocked for ever).
    CHECK(within(std::chrono::seconds(3), [&] { return threads_of(d.pid()) <= threads0; }));
    CHECK(within(std::chrono::seconds(3), [&] { return d.fd_count() <= fds0; }));
    INFO("threads " << threads0 << " -> " << threads_of(d.pid()) << ", fds " << fds0 << " -> " << d.fd_count());
    CHECK(d.alive());
}

TEST_CASE("write-back to a stalled server fails at the deadline, and goes through once it answers again",
          "[nbd][review]")
{
    Nbdkit server("memory", {"16M"});
    Daemon d({"--allow-store=" + server.allow_prefix(), "--store-timeout-ms=1000"});
    auto conn = d.connect();
    libclient::MapOptions o;
    o.length = 4 << 20;
    o.access = libclient::Access::Shared;
    auto r = conn->map_store(server.uri(), o);
    REQUIRE(r);
    auto* p = static_cast<std::uint8_t*>(r->addr);
    std::memset(p, 0x5a, 1 << 20);
    REQUIRE(conn->flush(*r));
    ::kill(server.pid(), SIGSTOP);
    std::memset(p, 0xa5, 1 << 20);
    const auto t0 = std::chrono::steady_clock::now();
    auto stalled = conn->flush(*r);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK_FALSE(stalled);  // answered, with an error, rather than never
    CHECK(took < std::chrono::seconds(8));
    ::kill(server.pid(), SIGCONT);
    auto again = conn->flush(*r);
    CHECK(again);
    if (again) CHECK(again->bytes >= (1u << 20));
    auto stores = conn->stores();
    REQUIRE(stores);
    REQUIRE(stores->size() == 1);
    CHECK(stores->at(0).write_errors > 0);
    CHECK(conn->unmap(*r));
    const auto t1 = std::chrono::steady_clock::now();
    CHECK(exited_with(d.stop(), 0));
    CHECK(std::chrono::steady_clock::now() - t1 < std::chrono::seconds(5));
}

TEST_CASE("one export under two spellings of its name is one store: Shared writes are seen through both",
          "[nbd][review]")
{
    Nbdkit server("memory", {"1M"});
    Daemon d({"--allow-store=" + server.allow_prefix()});
    auto a = d.connect("a");
    auto b = d.connect("b");
    libclient::MapOptions o;
    o.length = 4096;
    o.access = libclient::Access::Shared;
    auto ra = a->map_store(server.uri("disk"), o);
    auto rb = b->map_store(server.uri("%64isk"), o);
    REQUIRE(ra);
    REQUIRE(rb);
    auto* pa = static_cast<std::uint8_t*>(ra->addr);
    auto* pb = static_cast<std::uint8_t*>(rb->addr);
    CHECK(pb[0] == 0);
    std::memset(pa, 0xaa, 2048);
    CHECK(pb[0] == 0xaa);  // the same page
    REQUIRE(a->flush(*ra));
    std::memset(pb + 2048, 0xbb, 2048);
    REQUIRE(b->flush(*rb));
    auto stores = a->stores();
    REQUIRE(stores);
    CHECK(stores->size() == 1);
    CHECK(a->unmap(*ra));
    CHECK(b->unmap(*rb));
    // What the server holds: both halves.
    const auto copy = run_command({"/usr/bin/nbdcopy", server.uri("disk"), "-"});
    INFO(copy.err);
    REQUIRE(exited_with(copy.status, 0));
    const std::string& bytes = copy.out;
    REQUIRE(bytes.size() >= 4096);
    std::uint64_t wrong = 0;
    for (int i = 0; i < 4096; ++i) wrong += static_cast<std::uint8_t>(bytes[i]) != (i < 2048 ? 0xaa : 0xbb);
    CHECK(wrong == 0);
}

TEST_CASE("a server whose smallest request is larger than a page is refused at map, one of 512 bytes is read",
          "[nbd][review]")
{
    TempDir dir;
    make_file(dir.file("data"), 1 << 20, 9);
    Nbdkit big("file", {dir.file("data"), "blocksize-minimum=65536", "blocksize-preferred=65536",
                        "blocksize-maximum=1M", "blocksize-error-policy=error"},
               Nbdkit::Transport::Unix, {"blocksize-policy"});
    Nbdkit small("file", {dir.file("data"), "blocksize-minimum=512", "blocksize-error-policy=error"},
                 Nbdkit::Transport::Unix, {"blocksize-policy"});
    Daemon d({"--allow-store=" + big.allow_prefix(), "--allow-store=" + small.allow_prefix(),
              "--store-timeout-ms=2000"});
    auto conn = d.connect();
    libclient::MapOptions o;
    o.length = 1 << 20;
    const auto t0 = std::chrono::steady_clock::now();
    auto refused = conn->map_store(big.uri(), o);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().is_daemon(proto::ErrorCode::IO_ERROR));
    CHECK(refused.error().message.find("smallest request") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    auto r = conn->map_store(small.uri(), o);
    REQUIRE(r);
    const auto* p = static_cast<const std::uint8_t*>(r->addr);
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < o.length; ++i) bad += p[i] != pattern_byte(i, 9);
    CHECK(bad == 0);
    CHECK(d.status().sigbus_faults == 0);
}
