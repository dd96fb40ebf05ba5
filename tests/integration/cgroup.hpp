// Test helper: a memory cgroup of its own with a byte limit and no swap, to run a child
// process under memory pressure and read what the kernel charged it and whether it
// OOM-killed anything. Works with cgroup v1 (a "memory" hierarchy, e.g.
// /sys/fs/cgroup/memory) and v2 (the unified hierarchy with "memory" in
// cgroup.controllers). Needs root (or a delegated subtree).
//
// Never throws and asserts nothing: errors are returned (bool + a message); the tests
// decide what a failure means. The cgroup is created under the cgroup of the process
// that creates it (v2: the nearest ancestor where the memory controller can be enabled
// for children), so a limit already set on the test run still applies.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pagerd::test {

class MemoryCgroup {
public:
    // True when a memory cgroup can be created here; otherwise false and, if `reason` is
    // given, why not (no memory controller mounted, not writable, ...).
    static bool available(std::string* reason = nullptr);

    // Creates a cgroup with a unique name, limit `limit_bytes` of memory and no swap:
    //   v1: memory.limit_in_bytes, memory.memsw.limit_in_bytes (when the kernel accounts
    //       swap), memory.swappiness = 0
    //   v2: memory.max, memory.swap.max = 0 (when present); +memory in the parent's
    //       cgroup.subtree_control if it is not there yet
    // Check ok(); error() says what failed.
    explicit MemoryCgroup(std::uint64_t limit_bytes);
    // Moves the processes still in the cgroup out (to the parent, else to the cgroup the
    // creating process was in; one that cannot be moved is killed with SIGKILL), then
    // removes the directory. Never throws.
    ~MemoryCgroup();
    MemoryCgroup(const MemoryCgroup&) = delete;
    MemoryCgroup& operator=(const MemoryCgroup&) = delete;

    bool ok() const { return m_ok; }
    const std::string& error() const { return m_error; }
    int version() const { return m_version; }           // 1 or 2 (0 when not created)
    const std::string& path() const { return m_path; }  // the cgroup's directory
    const std::string& name() const { return m_name; }  // its last path component
    std::uint64_t limit() const { return m_limit; }

    // Moves process `pid` (all its threads) into the cgroup. Charges it already has stay
    // where they are; what it allocates from now on is charged here. On failure returns
    // false and, if `error` is given, why.
    bool add(pid_t pid, std::string* error = nullptr) const;
    std::vector<pid_t> procs() const;  // the processes in the cgroup now

    std::uint64_t usage() const;     // bytes charged now (v1 memory.usage_in_bytes, v2 memory.current)
    std::uint64_t peak() const;      // highest charge so far (v1 memory.max_usage_in_bytes,
                                     // v2 memory.peak); 0 when the kernel does not say
    std::uint64_t oom_kills() const; // processes the OOM killer killed in it ("oom_kill N" of
                                     // v1 memory.oom_control, v2 memory.events); 0 if absent

private:
    bool m_ok = false;
    std::string m_error;
    int m_version = 0;
    std::string m_path;
    std::string m_name;
    std::string m_parent;  // directory the cgroup was created in
    std::string m_home;    // cgroup of the creating process
    std::uint64_t m_limit = 0;
};

}  // namespace pagerd::test
