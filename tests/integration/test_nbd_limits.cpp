// NBD servers' limits: a server whose largest request is smaller than the daemon's loads.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "harness.hpp"
#include "nbdkit.hpp"

using namespace pagerd;
using namespace pagerd::test;

TEST_CASE("reads are split at the largest request the server takes", "[nbd]")
{
    TempDir dir;
    const std::uint64_t size = 16ull << 20;
    make_file(dir.file("data"), size, 5);
    // 64 KiB at most, and a larger request is an error (EINVAL): the daemon's 256 KiB loads
    // must go as four requests each.
    Nbdkit server("file", {dir.file("data"), "blocksize-maximum=64K", "blocksize-error-policy=error"},
                  Nbdkit::Transport::Unix, {"blocksize-policy"});
    Daemon d({"--allow-store=" + server.allow_prefix(), "--readahead-max=4194304"});
    auto conn = d.connect();
    libclient::MapOptions o;
    o.length = size;
    auto r = conn->map_store(server.uri(), o);
    REQUIRE(r);
    const auto* p = static_cast<const std::uint8_t*>(r->addr);
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < size; ++i) bad += p[i] != pattern_byte(i, 5);
    CHECK(bad == 0);
    auto stores = conn->stores();
    REQUIRE(stores);
    REQUIRE(stores->size() == 1);
    CHECK(stores->at(0).read_errors == 0);
    CHECK(stores->at(0).read_bytes == size);
    CHECK(d.status().sigbus_faults == 0);
    CHECK(conn->unmap(*r));
}

TEST_CASE("an export nobody maps any more has its connections closed", "[nbd]")
{
    TempDir dir;
    const std::uint64_t size = 8ull << 20;
    make_file(dir.file("data"), size, 6);
    Nbdkit server("file", {dir.file("data")});
    Daemon d({"--allow-store=" + server.allow_prefix(), "--store-connections=3"});
    auto conn = d.connect();
    const std::size_t before = d.fd_count();
    for (int round = 0; round < 3; ++round) {
        libclient::MapOptions o;
        o.length = size;
        auto r = conn->map_store(server.uri(), o);
        REQUIRE(r);
        const auto* p = static_cast<const std::uint8_t*>(r->addr);
        std::uint64_t bad = 0;
        for (std::uint64_t i = 0; i < size; i += 4096) bad += p[i] != pattern_byte(i, 6);
        CHECK(bad == 0);
        auto stores = conn->stores();
        REQUIRE(stores);
        REQUIRE(stores->size() == 1);
        CHECK(stores->at(0).connections >= 1);
        CHECK(stores->at(0).connections <= 3 * d.status().workers);
        CHECK(d.fd_count() > before);  // the connections (and the cache)
        CHECK(conn->unmap(*r));
        // Every connection of the export closes once its last region is gone.
        CHECK(d.wait_fds_at_most(before));
    }
}

TEST_CASE("a stop does not wait for reads of a server that does not answer", "[nbd]")
{
    TempDir dir;
    const std::uint64_t size = 8ull << 20;
    make_file(dir.file("data"), size, 3);
    // Every read waits a minute in the server; the daemon's deadline is a minute too.
    Nbdkit server("file", {dir.file("data"), "delay-read=60"}, Nbdkit::Transport::Unix, {"delay"});
    Daemon d({"--allow-store=" + server.allow_prefix(), "--store-timeout-ms=60000"});
    const std::string uri = server.uri();
    const pid_t child = start_child([&] {
        reset_fatal_signals();
        auto c = connect_within(d.socket());
        if (!c) return 2;
        libclient::MapOptions o;
        o.length = size;
        auto r = c->map_store(uri, o);
        if (!r) return 3;
        return static_cast<const volatile std::uint8_t*>(r->addr)[0] == pattern_byte(0, 3) ? 0 : 4;
    });
    auto conn = d.connect();
    bool reading = false;
    for (int i = 0; i < 200 && !reading; ++i) {
        if (auto stores = conn->stores(); stores && !stores->empty() && stores->at(0).inflight > 0) reading = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    REQUIRE(reading);
    conn.reset();
    const auto t0 = std::chrono::steady_clock::now();
    const int st = d.stop();
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(exited_with(st, 0));
    CHECK(took < std::chrono::seconds(5));
    // The faulting thread was answered: SIGBUS (the daemon could not serve it).
    CHECK(killed_by(wait_child(child, std::chrono::seconds(20)), SIGBUS));
}
