#include "programs.hpp"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <thread>

namespace pagerd::test::programs {

std::string pagerd_run()
{
    const std::string path = PAGERD_RUN;
    INFO("pagerd-run is not built at " << path << " (target pagerd-run of preload/)");
    REQUIRE(::access(path.c_str(), X_OK) == 0);
    return path;
}

std::vector<std::string> under_pagerd(const Daemon& daemon, const std::vector<std::string>& options,
                                      const std::vector<std::string>& argv)
{
    std::vector<std::string> v{pagerd_run(), "--socket", daemon.socket(), "--debug"};
    v.insert(v.end(), options.begin(), options.end());
    v.push_back("--");
    v.insert(v.end(), argv.begin(), argv.end());
    return v;
}

CommandResult run_ok(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                     std::chrono::milliseconds timeout)
{
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    auto r = run_command(argv, env, timeout);
    INFO("command: " << cmd);
    INFO("stderr: " << r.err.substr(0, 4000));
    INFO("stdout: " << r.out.substr(0, 2000));
    REQUIRE(exited_with(r.status, 0));
    return r;
}

std::vector<std::string> lines(const std::string& s)
{
    std::vector<std::string> v;
    std::istringstream in(s);
    std::string line;
    while (std::getline(in, line)) v.push_back(line);
    return v;
}

std::vector<std::string> debug_lines(const std::string& err, const std::string& path)
{
    std::string real = path;
    if (char* r = ::realpath(path.c_str(), nullptr)) {
        real = r;
        std::free(r);
    }
    std::vector<std::string> v;
    for (const auto& line : lines(err))
        if (line.rfind("pagerd-preload: ", 0) == 0 &&
            (line.find(path + ":") != std::string::npos || line.find(real + ":") != std::string::npos))
            v.push_back(line);
    return v;
}

bool taken(const std::string& err, const std::string& path)
{
    for (const auto& line : debug_lines(err, path))
        if (line.size() >= 7 && line.compare(line.size() - 7, 7, ": taken") == 0) return true;
    return false;
}

bool fell_back(const std::string& err, const std::string& path)
{
    bool back = false;
    for (const auto& line : debug_lines(err, path)) {
        if (line.find(": fell back") != std::string::npos) back = true;
        if (line.size() >= 7 && line.compare(line.size() - 7, 7, ": taken") == 0) return false;
    }
    return back;
}

std::string without_debug(const std::string& err)
{
    std::string s;
    for (const auto& line : lines(err))
        if (line.rfind("pagerd-preload: ", 0) != 0) s += line + "\n";
    return s;
}

FileId file_id(const std::string& path)
{
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::uint64_t>(st.st_size)};
}

std::uint64_t loaded_bytes(const libclient::Status& s) { return std::max(s.bytes_read, s.cache_loads * k_page); }

libclient::Status settle(libclient::Connection& conn, std::uint32_t clients, std::uint64_t regions,
                         std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto s = conn.status();
        REQUIRE(s.ok());
        if ((s->clients == clients && s->regions == regions) || std::chrono::steady_clock::now() > deadline)
            return s.value();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

std::uint64_t make_words_file(const std::string& path, std::uint64_t words, std::uint32_t seed)
{
    make_file(path, words * 8, seed);
    std::uint64_t sum = 0;
    for (std::uint64_t j = 0; j < words; ++j) {
        std::uint64_t w = 0;
        for (unsigned k = 0; k < 8; ++k) w |= std::uint64_t{pattern_byte(j * 8 + k, seed)} << (8 * k);
        sum += w;
    }
    return sum;
}

std::vector<std::string> quiet_env(const std::string& home)
{
    return {"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_PAGER=cat", "PAGER=cat", "LC_ALL=C",
            "GIT_AUTHOR_NAME=pagerd", "GIT_AUTHOR_EMAIL=pagerd@example.org", "GIT_COMMITTER_NAME=pagerd",
            "GIT_COMMITTER_EMAIL=pagerd@example.org", "GIT_AUTHOR_DATE=2026-01-01T00:00:00Z",
            "GIT_COMMITTER_DATE=2026-01-01T00:00:00Z"};
}

}  // namespace pagerd::test::programs
