// Helpers of the preload tests: mapper and pagerd-run's paths, the library's debug lines,
// and a mapper that stops at its "wait" steps while the test asks the daemon.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "integration/harness.hpp"

namespace pagerd::test::preload {

std::string pagerd_run();
std::string mapper();

// pagerd-run --socket SOCKET --debug OPTIONS... -- ARGV...
std::vector<std::string> under(const std::string& socket, const std::vector<std::string>& options,
                               const std::vector<std::string>& argv);
// mapper STEPS...
std::vector<std::string> mapper_with(const std::vector<std::string>& steps);

// The sum of a file's bytes (mapper's "sum" of all of it).
std::uint64_t byte_sum(const std::string& path, std::uint64_t offset = 0, std::uint64_t length = UINT64_MAX);

// The library's lines about `path` in a program's stderr: "taken" or "fell back: ...".
std::vector<std::string> decisions(const std::string& err, const std::string& path);
bool taken(const std::string& err, const std::string& path);
// The reason of the first "fell back" line about `path` ("" if none).
std::string fallback_reason(const std::string& err, const std::string& path);

// The daemon's regions that belong to process `pid`.
std::size_t regions_of(libclient::Connection& conn, pid_t pid);

// A program whose stdin and stdout are pipes: it runs until it prints "wait", the test looks
// at the daemon, then lets it go on.
class Interactive {
public:
    Interactive(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});
    ~Interactive();
    pid_t pid() const { return m_pid; }
    // Output up to and including the next "wait" line (fails the test at its end or after 30 s).
    std::string until_wait();
    void resume();
    CommandResult finish();  // closes stdin, waits; the whole output

private:
    pid_t m_pid = -1;
    int m_in = -1, m_out = -1;
    std::string m_all;
    TempDir m_dir;
};

}  // namespace pagerd::test::preload
