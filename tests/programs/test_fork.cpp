// Programs that fork after mapping a file (tests/programs/fork_after_map.c, written without
// pagerd in mind) under pagerd-run: children load the pages their parent never touched
// through pagerd, a MAP_SHARED child's writes reach the file with the parent's msync, and
// posix_spawn / fork + execve after mapping work and leave nothing behind in the daemon.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <thread>

#include "programs.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace pagerd::test::programs;

namespace {

const std::string k_prog = FORK_AFTER_MAP;

// Waits until the program creates `path`; false if it ends first or takes 30 s.
bool wait_for(const std::string& path, const std::future<CommandResult>& run)
{
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (::access(path.c_str(), F_OK) != 0) {
        if (std::chrono::steady_clock::now() > deadline ||
            run.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
            return ::access(path.c_str(), F_OK) == 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

void create(const std::string& path) { std::ofstream(path).put('\n'); }

// Sum of the words of [0, bytes) of a file made by make_words_file.
std::uint64_t sum_prefix(const std::vector<std::uint8_t>& file, std::uint64_t bytes)
{
    std::uint64_t s = 0;
    for (std::uint64_t i = 0; i + 8 <= bytes; i += 8) {
        std::uint64_t w = 0;
        for (unsigned k = 0; k < 8; ++k) w |= std::uint64_t{file[i + k]} << (8 * k);
        s += w;
    }
    return s;
}

// The daemon's cache of the file (st_dev, st_ino), if it has one.
std::optional<libclient::CacheInfo> cache_of(libclient::Connection& conn, const FileId& id)
{
    auto caches = conn.caches();
    REQUIRE(caches.ok());
    for (const auto& c : caches.value())
        if (c.dev == id.dev && c.ino == id.ino) return c;
    return std::nullopt;
}

}  // namespace

TEST_CASE("a program that forks after mapping: three children load the untouched half through pagerd", "[programs][fork]")
{
    TempDir dir;
    const std::string data = dir.file("data.bin");
    const std::uint64_t size = 32ull << 20;
    make_words_file(data, size / 8, 21);
    const auto bytes = read_file(data);
    const std::string half = "half " + std::to_string(sum_prefix(bytes, size / 2));
    const std::string all = std::to_string(sum_prefix(bytes, size));
    const auto plain = run_ok({k_prog, "read", data});
    const auto expect_lines = std::vector<std::string>{half, "all " + all};
    {
        const auto l = lines(plain.out);
        REQUIRE(l.size() == 5);
        REQUIRE(l.front() == half);
        for (std::size_t i = 1; i < 4; ++i) REQUIRE(l[i].substr(8) == all);
        REQUIRE(l.back() == "all " + all);
    }

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const std::string sync = dir.file("sync");
    std::filesystem::create_directory(sync);
    const auto argv = under_pagerd(daemon, {}, {k_prog, "read", data, sync});
    auto run = std::async(std::launch::async, [&] { return run_command(argv); });
    const bool children_done = wait_for(sync + "/children", run);
    // The children have ended; the parent touched only the first half (and what the daemon
    // read ahead of it): the rest came through the children's faults.
    const auto mid = conn->status();
    const auto cache = cache_of(*conn, file_id(data));
    create(sync + "/go");
    const auto r = run.get();
    INFO("stdout under pagerd-run: " << r.out);
    INFO("stderr under pagerd-run: " << r.err);
    REQUIRE(children_done);
    REQUIRE(exited_with(r.status, 0));
    const auto l = lines(r.out);
    REQUIRE(l.size() == 5);
    CHECK(l.front() == half);
    for (std::size_t i = 1; i < 4; ++i) {
        CHECK(l[i].rfind("child ", 0) == 0);
        CHECK(l[i].substr(8) == all);
    }
    CHECK(l.back() == "all " + all);
    CHECK(taken(r.err, data));
    REQUIRE(mid.ok());
    CHECK(loaded_bytes(mid.value()) - loaded_bytes(before) >= size * 9 / 10);
    CHECK(cache.has_value());
    if (cache) CHECK(cache->resident >= size * 9 / 10);
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
}

TEST_CASE("a MAP_SHARED child's writes reach the file through the parent's msync under pagerd", "[programs][fork]")
{
    TempDir dir;
    const std::uint64_t size = 16ull << 20;
    const std::string plain_file = dir.file("plain.bin"), data = dir.file("data.bin");
    make_file(plain_file, size, 33);
    make_file(data, size, 33);
    auto expect = read_file(data);
    std::uint64_t writes = 0;
    for (std::uint64_t pg = 0; pg < size / k_page; pg += 8, ++writes)
        expect[pg * k_page + 100] = static_cast<std::uint8_t>((pg * 7 + 1) & 0xff);
    const std::string out = "written " + std::to_string(writes) + "\nseen " + std::to_string(writes) + "\n";

    const auto plain = run_ok({k_prog, "write", plain_file});
    REQUIRE(plain.out == out);
    REQUIRE(read_file(plain_file) == expect);

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const auto r = run_ok(under_pagerd(daemon, {}, {k_prog, "write", data}));
    INFO("stderr under pagerd-run: " << r.err);
    CHECK(r.out == out);
    CHECK(without_debug(r.err) == plain.err);
    CHECK(taken(r.err, data));
    CHECK(read_file(data) == expect);
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
    CHECK(after.faults > before.faults);
    CHECK(after.cache_dirty_bytes == 0);
    CHECK(loaded_bytes(after) > loaded_bytes(before));
}

TEST_CASE("posix_spawn and fork then execve after mapping work under pagerd and leave nothing behind", "[programs][fork]")
{
    TempDir dir;
    const std::string data = dir.file("data.bin");
    const std::uint64_t size = 16ull << 20;
    make_words_file(data, size / 8, 45);
    const auto bytes = read_file(data);
    const std::string expect = "half " + std::to_string(sum_prefix(bytes, size / 2)) + "\ntrue 0\nnothing 0\nall " +
                               std::to_string(sum_prefix(bytes, size)) + "\n";
    {
        const std::string sync = dir.file("plain");
        std::filesystem::create_directory(sync);
        create(sync + "/go1");
        create(sync + "/go2");
        const auto plain = run_ok({k_prog, "spawn", data, sync});
        REQUIRE(plain.out == expect);
    }

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const std::string sync = dir.file("sync");
    std::filesystem::create_directory(sync);
    const auto argv = under_pagerd(daemon, {}, {k_prog, "spawn", data, sync});
    auto run = std::async(std::launch::async, [&] { return run_command(argv); });
    const bool mapped = wait_for(sync + "/mapped", run);
    auto mapped_status = conn->status();
    create(sync + "/go1");
    const bool spawned = mapped && wait_for(sync + "/spawned", run);
    // Both children have ended: the daemon is back to what it was before they started.
    libclient::Status spawned_status;
    if (spawned && mapped_status.ok())
        spawned_status = settle(*conn, mapped_status->clients, mapped_status->regions);
    create(sync + "/go2");
    const auto r = run.get();
    INFO("stdout under pagerd-run: " << r.out);
    INFO("stderr under pagerd-run: " << r.err);
    REQUIRE(mapped);
    REQUIRE(spawned);
    REQUIRE(exited_with(r.status, 0));
    CHECK(r.out == expect);
    CHECK(taken(r.err, data));
    REQUIRE(mapped_status.ok());
    CHECK(mapped_status->clients == 2);  // the test's connection and the program's
    CHECK(mapped_status->regions >= 1);
    CHECK(spawned_status.clients == mapped_status->clients);
    CHECK(spawned_status.regions == mapped_status->regions);
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
    CHECK(after.faults > before.faults);
    CHECK(loaded_bytes(after) - loaded_bytes(before) >= size * 9 / 10);
}
