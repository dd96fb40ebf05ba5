// SlowFs: the slowfs FUSE program (tests/slowfs/slowfs.c) mounted for the length of a test.
//
// Files under `mountpoint` are the files of `backing`; every write request to them sleeps
// `delay_ms`, and while the gate is closed it waits until the gate is opened. Reads are
// not slowed, unless a SlowFsOptions::read_gate mount closes its read gate: then read
// requests of the range it names wait after reading their bytes (so a held read returns
// the file as it was when the request arrived). The writeback cache is off: a
// write(2)/pwrite(2)/io_uring write returns only after slowfs has written it, as one write
// request per max_write bytes (1 MiB here).
//
// SlowFsOptions::direct_io: files are opened direct_io (no kernel page cache): every read
// and write of a file is a request to slowfs, and a read held at the read gate locks no
// page that a write of the same range would wait for.
//
// Note for tests: while a buffered write to a file waits at the gate, the kernel holds that
// file's inode lock: a second write to the same file queues in the kernel and does not
// reach slowfs, so it is not counted in `blocked`. Reads of that file, also of the pages
// being written, went through on the kernel this was written on (6.18); older kernels
// may keep the pages under write locked until the write ends.
//
// Declare the SlowFs before anything that keeps files in it open (a daemon, descriptors),
// so that those are gone when it unmounts. slowfs gets SIGTERM (and unmounts) if the
// thread that constructed the SlowFs dies, so a killed test leaves no mount either:
// construct it on a thread that outlives it (the test's own).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace pagerd::test {

struct SlowFsStats {
    std::uint64_t writes = 0;         // write requests completed
    std::uint64_t bytes_written = 0;  // their bytes
    unsigned blocked = 0;             // write requests waiting at the gate now
    std::uint64_t reads = 0;          // read requests of files completed (read_gate mounts only)
    unsigned read_blocked = 0;        // read requests waiting at the read gate now (read_gate only)
};

struct SlowFsOptions {
    int delay_ms = 0;        // every write request sleeps this long
    bool direct_io = false;  // slowfs --direct-io: no kernel page cache for the files
    bool read_gate = false;  // slowfs --read-gate: close_read_gate() works
};

class SlowFs {
public:
    // Creates `backing` and `mountpoint` if missing (never removes them), detaches a dead
    // FUSE mount left at `mountpoint` (ENOTCONN), starts slowfs with the gate open, and
    // returns once the mount is live. Throws std::runtime_error (with slowfs's output) if
    // it does not come up within 10 s, or if `mountpoint` is a live FUSE mount already.
    SlowFs(std::string backing, std::string mountpoint, int delay_ms);
    SlowFs(std::string backing, std::string mountpoint, const SlowFsOptions& options);
    // stop(); never leaves a mount behind, also after a failed test.
    ~SlowFs();
    SlowFs(const SlowFs&) = delete;
    SlowFs& operator=(const SlowFs&) = delete;

    std::string path(const std::string& name) const;  // mountpoint/name
    const std::string& mountpoint() const { return m_mountpoint; }
    const std::string& backing() const { return m_backing; }
    std::string backing_path(const std::string& name) const;  // backing/name, bypassing FUSE

    // Write requests that reach slowfs from now on wait at the gate (a request already
    // past it, sleeping its delay, is not held). Then their delay, then the write.
    void close_gate();
    void open_gate();  // waiting writes proceed within ~5 ms

    // The read gate (SlowFsOptions::read_gate; throws std::logic_error without it). Read
    // requests that reach slowfs from now on and meet [offset, offset + length) read their
    // bytes, then wait until open_read_gate(); with max_held > 0 at most that many wait at
    // once, and further ones go through. close_read_gate() with no range holds every read.
    void close_read_gate();
    void close_read_gate(std::uint64_t offset, std::uint64_t length, unsigned max_held = 0);
    void open_read_gate();  // waiting reads return within ~5 ms
    unsigned blocked_reads() const;
    // Polls the stats until at least `n` reads wait at the read gate; false on timeout.
    bool wait_blocked_reads(unsigned n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

    // Read from mountpoint/.slowfs-stats.
    SlowFsStats stats() const;
    unsigned blocked_writes() const;
    std::uint64_t writes() const;
    std::uint64_t bytes_written() const;
    // Polls the stats until at least `n` writes wait at the gate; false on timeout.
    bool wait_blocked(unsigned n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

    pid_t pid() const { return m_pid; }  // -1 once stopped
    // The gate is this file (in a private directory under /tmp): present = closed. For
    // another process (a forked client) that needs to open or close it.
    const std::string& gate_path() const { return m_gate; }
    const std::string& read_gate_path() const { return m_read_gate; }  // "" without read_gate
    std::string log() const;  // slowfs's stdout and stderr so far

    // Opens the gates, SIGTERMs slowfs (SIGKILL after 10 s), reaps it, and detaches the
    // mount if it is still there (a slowfs that crashed or was killed leaves it dead).
    // Returns slowfs's wait status (0: clean exit, also no sanitizer report); -1 if
    // already stopped. Idempotent.
    int stop();

private:
    void cleanup_files();

    std::string m_backing;
    std::string m_mountpoint;  // canonical (realpath), as /proc/self/mountinfo shows it
    std::string m_dir;         // private temporary directory: gate file and log
    std::string m_gate;
    std::string m_read_gate;  // "" unless SlowFsOptions::read_gate
    std::string m_log;
    pid_t m_pid = -1;
};

// True if `path` (canonical) is a mount point in /proc/self/mountinfo.
bool is_mount_point(const std::string& path);

}  // namespace pagerd::test
