// git (Debian's, unmodified) under pagerd-run --map '*.pack': git fsck --full and git log -p
// on a repository whose 64 MiB of incompressible blobs are in one pack file, which git reads
// through mmap. Output and exit status equal git's without pagerd-run; the preload library
// says it took the pack; the daemon read about the pack's bytes.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "programs.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace pagerd::test::programs;

namespace {

const std::string k_git = "/usr/bin/git";

// A repository of 4 commits, each adding two 8 MiB blobs of incompressible bytes and changing
// a text file, packed into one pack (no loose objects). Returns the pack's path.
std::string make_repo(const std::string& repo, const std::vector<std::string>& env)
{
    run_ok({k_git, "init", "-q", repo}, env);
    std::string notes;
    for (int c = 0; c < 4; ++c) {
        for (int k = 0; k < 2; ++k)
            make_file(repo + "/blob-" + std::to_string(c) + "-" + std::to_string(k) + ".bin", 8ull << 20,
                      static_cast<std::uint32_t>(100 + c * 2 + k));
        for (int l = 0; l < 50; ++l) notes += "commit " + std::to_string(c) + " line " + std::to_string(l) + "\n";
        std::ofstream(repo + "/notes.txt", std::ios::trunc) << notes;
        run_ok({k_git, "-C", repo, "-c", "core.compression=0", "add", "-A"}, env);
        run_ok({k_git, "-C", repo, "commit", "-q", "-m", "commit " + std::to_string(c)}, env);
    }
    // Stored, not deflated again (the blobs do not compress); no delta search among 8 MiB blobs.
    run_ok({k_git, "-C", repo, "-c", "pack.compression=0", "repack", "-a", "-d", "-q", "--window=0"}, env);
    const auto count = run_ok({k_git, "-C", repo, "count-objects", "-v"}, env);
    INFO(count.out);
    REQUIRE(count.out.find("count: 0\n") != std::string::npos);  // no loose object left
    std::vector<std::string> packs;
    for (const auto& e : std::filesystem::directory_iterator(repo + "/.git/objects/pack"))
        if (e.path().extension() == ".pack") packs.push_back(e.path().string());
    REQUIRE(packs.size() == 1);
    REQUIRE(file_id(packs[0]).size >= (60ull << 20));
    return packs[0];
}

}  // namespace

TEST_CASE("git fsck full and git log with patches read a 64 MiB pack through pagerd", "[programs][git]")
{
    TempDir dir;
    const auto env = quiet_env(dir.path());
    const std::string repo = dir.file("repo");
    const std::string pack = make_repo(repo, env);
    const std::uint64_t pack_size = file_id(pack).size;

    const std::vector<std::vector<std::string>> progs{
        {k_git, "-C", repo, "fsck", "--full", "--no-progress", "--strict"},
        {k_git, "-C", repo, "log", "-p", "--stat", "--all"},
    };
    for (const auto& prog : progs) {
        INFO("git " << prog[3]);
        const auto plain = run_ok(prog, env);
        Daemon daemon;  // a fresh daemon each: its cache holds nothing of the pack yet
        auto conn = daemon.connect();
        const auto before = settle(*conn, 1, 0);
        const auto r = run_ok(under_pagerd(daemon, {"--map", "*.pack"}, prog), env);
        INFO("stderr under pagerd-run: " << r.err.substr(0, 4000));
        CHECK(r.out == plain.out);
    CHECK(without_debug(r.err) == plain.err);
        CHECK(taken(r.err, pack));
        const auto after = settle(*conn, 1, 0);
        CHECK(after.clients == 1);
        CHECK(after.regions == 0);
        CHECK(after.faults > before.faults);
        // fsck hashes the whole pack; log -p reads every blob to tell whether it is binary.
        CHECK(loaded_bytes(after) - loaded_bytes(before) >= pack_size * 9 / 10);
    }
}
