// A memory cgroup of the benchmark's own, with a byte limit and no swap, for the reading
// processes of the cache cases (--cases cache). Cgroup v1 (a "memory" hierarchy, e.g.
// /sys/fs/cgroup/memory) or v2 (the unified hierarchy with "memory" in
// cgroup.controllers); needs root or a delegated subtree. Adapted from the integration
// tests' helper (tests/integration/cgroup.hpp): the benchmark does not link the test
// harness.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pagerd::bench {

class MemoryCgroup {
public:
    // Creates a cgroup with a unique name under the cgroup of this process (v2: the
    // nearest ancestor where the memory controller can be enabled for children), limit
    // `limit_bytes` and no swap (v1: memory.limit_in_bytes, memory.memsw.limit_in_bytes
    // when present, memory.swappiness = 0; v2: memory.max, memory.swap.max = 0).
    // Check ok(); error() says what failed.
    explicit MemoryCgroup(std::uint64_t limit_bytes);
    // Moves the processes still in it out (one that cannot be moved is killed), removes it.
    ~MemoryCgroup();
    MemoryCgroup(const MemoryCgroup&) = delete;
    MemoryCgroup& operator=(const MemoryCgroup&) = delete;

    bool ok() const { return m_ok; }
    const std::string& error() const { return m_error; }
    int version() const { return m_version; }
    const std::string& path() const { return m_path; }
    // The file a process writes "0" into to move itself in (cgroup.procs).
    std::string procs_file() const { return m_path + "/cgroup.procs"; }
    std::vector<pid_t> procs() const;

    std::uint64_t peak() const;       // highest charge so far; 0 when the kernel does not say
    std::uint64_t oom_kills() const;  // processes the OOM killer killed in it; 0 if unknown

private:
    bool m_ok = false;
    std::string m_error;
    int m_version = 0;
    std::string m_path, m_parent, m_home;
};

}  // namespace pagerd::bench
