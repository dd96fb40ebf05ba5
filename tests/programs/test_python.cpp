// Python (Debian's python3 and python3-numpy, unmodified) under pagerd-run: mmap.mmap and
// numpy.memmap summing a large file, and a multiprocessing pool (fork start method) whose
// workers sum parts of the parent's memmap. Each result equals the one without pagerd-run
// and the expected sum, and the daemon's counters show that the file's pages came through it.
#include <catch2/catch.hpp>

#include <sstream>

#include "programs.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace pagerd::test::programs;

namespace {

const std::string k_python = "/usr/bin/python3";
const std::string k_dir = std::string(PAGERD_SOURCE_DIR) + "/tests/programs/";

std::string first_word(const std::string& s) { return s.substr(0, s.find_first_of(" \n")); }

}  // namespace

TEST_CASE("python mmap module sums a 64 MiB file through pagerd as without it", "[programs][python]")
{
    TempDir dir;
    const std::string data = dir.file("data.bin");
    const std::uint64_t size = 64ull << 20;
    const std::uint64_t expect = make_words_file(data, size / 8, 3);
    const std::vector<std::string> prog{k_python, k_dir + "sum_mmap.py", data};
    const auto plain = run_ok(prog);
    REQUIRE(first_word(plain.out) == std::to_string(expect));

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const auto r = run_ok(under_pagerd(daemon, {}, prog));
    INFO("stderr under pagerd-run: " << r.err);
    CHECK(r.out == plain.out);
    CHECK(without_debug(r.err) == plain.err);
    CHECK(taken(r.err, data));
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
    CHECK(after.faults > before.faults);
    CHECK(loaded_bytes(after) - loaded_bytes(before) >= size * 9 / 10);
}

TEST_CASE("python numpy memmap sums a 96 MiB uint64 array through pagerd as without it", "[programs][python]")
{
    TempDir dir;
    const std::string data = dir.file("array.u64");
    const std::uint64_t size = 96ull << 20;
    const std::uint64_t expect = make_words_file(data, size / 8, 5);
    const std::vector<std::string> prog{k_python, k_dir + "sum_memmap.py", data};
    const auto plain = run_ok(prog);
    REQUIRE(first_word(plain.out) == std::to_string(expect));

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const auto r = run_ok(under_pagerd(daemon, {}, prog));
    INFO("stderr under pagerd-run: " << r.err);
    CHECK(r.out == plain.out);
    CHECK(without_debug(r.err) == plain.err);
    CHECK(taken(r.err, data));
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
    CHECK(after.faults > before.faults);
    CHECK(loaded_bytes(after) - loaded_bytes(before) >= size * 9 / 10);
}

TEST_CASE("python multiprocessing fork pool workers sum the parent's memmap through pagerd", "[programs][python][fork]")
{
    TempDir dir;
    const std::string data = dir.file("shared.u64");
    const std::uint64_t size = 64ull << 20;
    const std::uint64_t expect = make_words_file(data, size / 8, 9);
    // The parent sums the first eighth, then a pool of 4 workers forked after the memmap sums
    // the four quarters: 7/8 of the file is loaded by the workers alone.
    const std::vector<std::string> prog{k_python, k_dir + "sum_memmap.py", data, "4"};
    const auto plain = run_ok(prog);
    std::istringstream p(plain.out);
    std::uint64_t sum = 0, parts = 0, workers = 0;
    p >> sum >> parts >> workers;
    REQUIRE(sum == expect);
    REQUIRE(parts == 4);
    REQUIRE(workers == 4);

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const auto r = run_ok(under_pagerd(daemon, {}, prog));
    INFO("stdout under pagerd-run: " << r.out);
    INFO("stderr under pagerd-run: " << r.err);
    std::istringstream q(r.out);
    std::uint64_t sum2 = 0, parts2 = 0, workers2 = 0;
    q >> sum2 >> parts2 >> workers2;
    CHECK(sum2 == expect);
    CHECK(parts2 == 4);
    CHECK(workers2 == 4);
    CHECK(without_debug(r.err) == plain.err);
    CHECK(taken(r.err, data));
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
    CHECK(after.faults > before.faults);
    CHECK(loaded_bytes(after) - loaded_bytes(before) >= size * 9 / 10);
}
