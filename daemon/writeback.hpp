// Write-back: pages of Shared regions' memfds to their files, off the fault path. Each
// worker has a Writer, a thread of its own with its own io_uring: the worker queues a
// job (a FLUSH, an unmap, a client's death) and goes on serving faults; the writer writes,
// fdatasyncs, clears the flushing bits of what reached the file, and hands the job back.
#pragma once
#include <liburing.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cache.hpp"
#include "region_table.hpp"

namespace pagerd::daemon {

struct WriteJob {
    struct Part {
        std::shared_ptr<SharedMemory> mem;  // keeps the memfd mapped and the file open
        std::uint64_t region_id = 0;
        std::vector<PageRun> runs;
        bool clear_flushing = false;  // a flush: its collected pages are no longer pending once written
        // Or a range of a page cache written by Shared regions: its dirty pages are collected
        // (and protected in every view) on the writer's thread, then written.
        std::shared_ptr<Cache> cache;
        std::uint64_t first = 0, count = 0;  // cache pages (count 0: all of them)
    };
    std::vector<Part> parts;
    std::uint64_t client = 0;      // serial of the client it is for
    std::int32_t pid = 0;
    std::uint32_t request_id = 0;  // the FLUSH to answer
    bool reply = false;            // a FLUSH waits for it (else: only logged)
    std::string why;               // "flush", "unmapped", "client gone", ...
    // Filled in by the writer:
    std::uint64_t pages = 0, bytes = 0;
    int error = 0;  // errno of the first failed write or fdatasync
    std::uint64_t failed_region = 0;
    bool cache_written = false;  // it wrote page cache pages: some may be evictable now
};

// Writes pages with one io_uring, synchronously: only ever called on a writer's thread.
class Writeback {
public:
    explicit Writeback(std::uint32_t page_size);
    ~Writeback();
    Writeback(const Writeback&) = delete;
    Writeback& operator=(const Writeback&) = delete;

    struct Outcome {
        std::uint64_t pages = 0;
        std::uint64_t bytes = 0;
        int error = 0;  // errno of the first failed write or fdatasync
    };
    // Writes the pages of `runs` that the memfd holds (never touching one it does not
    // hold), clipped at the file's current size, then fdatasync.
    Outcome write(const SharedMemory& mem, const std::vector<PageRun>& runs);
    // Writes the pages of `runs` of a page cache to its file (read from the memfd, so a
    // hole reads as zeros and never becomes a page), clipped at the file's size, then
    // fdatasync.
    Outcome write(const Cache& cache, const std::vector<PageRun>& runs);

private:
    void queue_write(int fd, const std::uint8_t* src, std::uint64_t len, std::uint64_t off);
    int drain(unsigned expected);

    std::uint32_t m_page;
    io_uring m_ring{};
    std::vector<std::uint8_t> m_bounce;  // cache pages on their way to the file
    unsigned m_queued = 0;
};

class Writer {
public:
    // `notify` is called on the writer's thread after a job is done (wakes the worker).
    Writer(std::uint32_t page_size, unsigned index, std::function<void()> notify);
    ~Writer();  // finish()es
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    void submit(std::unique_ptr<WriteJob> job);
    std::vector<std::unique_ptr<WriteJob>> take_done();
    // Writes everything queued, then stops the thread. Jobs done stay for take_done().
    void finish();

private:
    void run();
    void write_cache(WriteJob& job, WriteJob::Part& part);

    Writeback m_writeback;
    std::function<void()> m_notify;
    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<std::unique_ptr<WriteJob>> m_queue;
    std::vector<std::unique_ptr<WriteJob>> m_done;
    bool m_finish = false;
    std::thread m_thread;
};

}  // namespace pagerd::daemon
