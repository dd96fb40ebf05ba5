// Helpers of the tests that run unmodified programs (python3, numpy, git, sqlite3, a small C
// program) under pagerd-run against the real daemon, and the same programs without it.
#pragma once
#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <vector>

#include "integration/harness.hpp"

namespace pagerd::test::programs {

inline constexpr std::uint64_t k_page = 4096;

// pagerd-run of the build tree (PAGERD_RUN); fails the test when it is not there.
std::string pagerd_run();

// pagerd-run --socket SOCKET --debug OPTIONS... -- ARGV...
std::vector<std::string> under_pagerd(const Daemon& daemon, const std::vector<std::string>& options,
                                      const std::vector<std::string>& argv);

// Runs argv and requires that it exits 0 (its stderr in the failure message).
CommandResult run_ok(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                     std::chrono::milliseconds timeout = std::chrono::seconds(60));

// The preload library's debug lines ("pagerd-preload: <path>: taken" or "...: fell back: reason")
// in a program's stderr that name `path` (or its real path).
std::vector<std::string> debug_lines(const std::string& err, const std::string& path);
bool taken(const std::string& err, const std::string& path);      // some line says taken
bool fell_back(const std::string& err, const std::string& path);  // some line says fell back, none taken

struct FileId {
    std::uint64_t dev = 0, ino = 0, size = 0;
};
FileId file_id(const std::string& path);

// Bytes the daemon read from files so far: the larger of bytes_read and cache_loads pages.
std::uint64_t loaded_bytes(const libclient::Status& s);

// Polls the daemon (through `conn`) until it has `clients` clients and `regions` regions, for
// up to `timeout`; returns the last status seen.
libclient::Status settle(libclient::Connection& conn, std::uint32_t clients, std::uint64_t regions,
                         std::chrono::milliseconds timeout = std::chrono::seconds(3));

// A file of `words` 64-bit little-endian words made by make_file(path, ..., seed), and the
// wrapping sum of its words.
std::uint64_t make_words_file(const std::string& path, std::uint64_t words, std::uint32_t seed);

// Environment for git and sqlite3: HOME in `home`, no system or global configuration, fixed dates.
std::vector<std::string> quiet_env(const std::string& home);

// A program's stderr without the preload library's debug lines.
std::string without_debug(const std::string& err);

// The lines of `s`.
std::vector<std::string> lines(const std::string& s);

}  // namespace pagerd::test::programs
