#include "writeback.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace pagerd::daemon {
namespace {

constexpr unsigned k_ring = 64;
constexpr std::uint64_t k_max_write = 1 << 20;
// Cache write-back: pieces of at most k_piece bytes, k_bounce_slots of them in flight (2 MiB
// of buffers per writer, kept between jobs).
constexpr std::uint64_t k_piece = 256 << 10;
constexpr unsigned k_bounce_slots = 8;

}  // namespace

Writeback::Writeback(std::uint32_t page_size) : m_page(page_size)
{
    if (int r = io_uring_queue_init(k_ring, &m_ring, 0); r < 0)
        throw std::runtime_error(std::string("io_uring_queue_init (write-back): ") + std::strerror(-r));
}

Writeback::~Writeback() { io_uring_queue_exit(&m_ring); }

void Writeback::queue_write(int fd, const std::uint8_t* src, std::uint64_t len, std::uint64_t off)
{
    io_uring_sqe* s = io_uring_get_sqe(&m_ring);
    if (!s) {
        io_uring_submit(&m_ring);
        s = io_uring_get_sqe(&m_ring);
    }
    io_uring_prep_write(s, fd, src, static_cast<unsigned>(len), off);
    // user_data carries what a short write needs to go on with pwrite
    io_uring_sqe_set_data64(s, len);
    ++m_queued;
}

// Waits for `expected` completions; returns the first error (0 if none).
int Writeback::drain(unsigned expected)
{
    int error = 0;
    io_uring_submit(&m_ring);
    for (unsigned i = 0; i < expected; ++i) {
        io_uring_cqe* cqe = nullptr;
        int r;
        while ((r = io_uring_wait_cqe(&m_ring, &cqe)) == -EINTR) {
        }
        if (r < 0) return -r;
        const int res = cqe->res;
        const auto want = io_uring_cqe_get_data64(cqe);
        io_uring_cqe_seen(&m_ring, cqe);
        if (res < 0 && !error) error = -res;
        if (res >= 0 && static_cast<std::uint64_t>(res) != want && !error) error = EIO;  // short write
    }
    return error;
}

Writeback::Outcome Writeback::write(const SharedMemory& mem, const std::vector<PageRun>& runs)
{
    Outcome out;
    const int fd = mem.store->descriptor();  // io_uring writes: a file store's descriptor
    const int memfd = mem.memfd.get();
    struct stat st{};
    if (::fstat(fd, &st) != 0) return {0, 0, errno};
    const auto file_size = static_cast<std::uint64_t>(st.st_size);
    // Only pages the memfd holds: reading a hole through our mapping would create a zero
    // page that the client would then see without a fault. The runs come in ascending
    // order; one SEEK_DATA / SEEK_HOLE pair per extent of data, not per run.
    std::uint64_t data = 0, hole = 0;  // the current extent of data [data, hole)
    auto next_extent = [&](std::uint64_t from) {
        const off_t d = ::lseek(memfd, static_cast<off_t>(from), SEEK_DATA);
        if (d < 0 || static_cast<std::uint64_t>(d) >= mem.length) {
            data = hole = mem.length;  // no data from here on
            return;
        }
        const off_t h = ::lseek(memfd, d, SEEK_HOLE);
        data = static_cast<std::uint64_t>(d);
        hole = h < 0 ? mem.length : std::min<std::uint64_t>(static_cast<std::uint64_t>(h), mem.length);
    };
    auto flush_queue = [&] {
        if (int e = drain(m_queued); e && !out.error) out.error = e;
        m_queued = 0;
    };
    for (std::size_t i = 0; i < runs.size();) {
        // Merge runs that touch (a run may be cut at a bitmap word boundary).
        std::uint64_t pos = runs[i].first * m_page;
        std::uint64_t end = (runs[i].first + runs[i].count) * m_page;
        for (++i; i < runs.size() && runs[i].first * m_page == end; ++i) end += runs[i].count * m_page;
        end = std::min(end, mem.length);
        while (pos < end) {
            if (pos >= hole) next_extent(pos);
            if (data >= end) break;
            pos = std::max(pos, data);
            const std::uint64_t stop = std::min(end, hole);
            for (std::uint64_t p = pos; p < stop;) {
                const std::uint64_t file_off = mem.file_base + p;
                if (file_off >= file_size) break;  // the file shrank: nothing to write there
                const std::uint64_t len = std::min({stop - p, k_max_write, file_size - file_off});
                queue_write(fd, mem.base + p, len, file_off);
                out.pages += (len + m_page - 1) / m_page;
                out.bytes += len;
                p += len;
                if (m_queued == k_ring) flush_queue();
            }
            pos = stop;
        }
    }
    if (m_queued) flush_queue();
    if (out.bytes) {
        io_uring_sqe* s = io_uring_get_sqe(&m_ring);
        io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
        io_uring_sqe_set_data64(s, 0);
        if (int e = drain(1); e && !out.error) out.error = e;
    }
    return out;
}

Writeback::Outcome Writeback::write(const Cache& cache, const std::vector<PageRun>& runs)
{
    Outcome out;
    if (runs.empty()) return out;
    const auto store = cache.write_store();
    if (!store) return {0, 0, EBADF};  // no descriptor of the file open for writing: the pages stay dirty
    const std::int64_t size = store->size();
    if (size < 0) return {0, 0, static_cast<int>(-size)};
    const auto file_size = static_cast<std::uint64_t>(size);
    // Each piece is read from the memfd into a buffer of its own, then written through
    // io_uring, k_bounce_slots pieces in flight.
    if (m_bounce.size() < k_bounce_slots * k_piece) m_bounce.resize(k_bounce_slots * k_piece);
    unsigned slot = 0;
    auto flush_queue = [&] {
        if (int e = drain(m_queued); e && !out.error) out.error = e;
        m_queued = 0;
        slot = 0;
    };
    for (std::size_t i = 0; i < runs.size() && !out.error;) {
        // Merge runs that touch (a run may be cut at a bitmap word boundary).
        std::uint64_t pos = runs[i].first * m_page;
        std::uint64_t end = (runs[i].first + runs[i].count) * m_page;
        for (++i; i < runs.size() && runs[i].first * m_page == end; ++i) end += runs[i].count * m_page;
        end = std::min(end, file_size);  // the file shrank: nothing to write past its end
        while (pos < end && !out.error) {
            if (slot == k_bounce_slots) flush_queue();
            std::uint8_t* buf = m_bounce.data() + slot * k_piece;
            const std::uint64_t len = std::min(end - pos, k_piece);
            const ssize_t got = ::pread(cache.memfd(), buf, len, static_cast<off_t>(pos));
            if (got <= 0) {
                out.error = got < 0 ? errno : EIO;
                break;
            }
            if (!store->ring_writes()) {
                // A remote store writes through its own connection, waiting for each piece.
                const ssize_t put = store->write(buf, static_cast<std::uint64_t>(got), pos);
                if (put != got) {
                    out.error = put < 0 ? errno : EIO;
                    break;
                }
            } else {
                io_uring_sqe* s = io_uring_get_sqe(&m_ring);
                if (!s) {
                    flush_queue();
                    s = io_uring_get_sqe(&m_ring);
                }
                store->prep_write(s, buf, static_cast<unsigned>(got), pos);
                io_uring_sqe_set_data64(s, static_cast<std::uint64_t>(got));
                ++m_queued;
                ++slot;
            }
            out.pages += (static_cast<std::uint64_t>(got) + m_page - 1) / m_page;
            out.bytes += static_cast<std::uint64_t>(got);
            pos += static_cast<std::uint64_t>(got);
        }
    }
    if (m_queued) flush_queue();
    if (out.bytes && !out.error) out.error = store->sync();
    return out;
}

Writer::Writer(std::uint32_t page_size, unsigned index, std::function<void()> notify)
    : m_writeback(page_size), m_notify(std::move(notify))
{
    m_thread = std::thread([this] { run(); });
    const std::string name = "pagerd-wb" + std::to_string(index);
    pthread_setname_np(m_thread.native_handle(), name.c_str());
}

Writer::~Writer() { finish(); }

void Writer::submit(std::unique_ptr<WriteJob> job)
{
    {
        std::lock_guard lock(m_mutex);
        m_queue.push_back(std::move(job));
    }
    m_cv.notify_one();
}

std::vector<std::unique_ptr<WriteJob>> Writer::take_done()
{
    std::lock_guard lock(m_mutex);
    return std::exchange(m_done, {});
}

void Writer::finish()
{
    {
        std::lock_guard lock(m_mutex);
        m_finish = true;
    }
    m_cv.notify_one();
    if (m_thread.joinable()) m_thread.join();
}

// Collect (protecting the pages in every view), write, then clear: a write after the
// protection faults and makes the page dirty again, so nothing written is lost.
void Writer::write_cache(WriteJob& job, WriteJob::Part& part)
{
    // Stopping for a restart: the dirty set goes to the next daemon as it is (a client
    // leaving the table now would keep its pages writable, unseen by the protection).
    if (part.cache->keeping_for_restart()) return;
    const auto serial = part.cache->lock_writeback();
    job.cache_written = true;
    if (part.count == 0)  // the whole file (pages past its end are never dirty)
        part.count = (part.cache->size() + part.cache->page_size() - 1) / part.cache->page_size();
    const auto runs = part.cache->collect(part.first, part.count);
    const auto out = m_writeback.write(*part.cache, runs);
    part.cache->written(runs, out.error == 0);
    job.pages += out.pages;
    job.bytes += out.bytes;
    if (out.error && !job.error) {
        job.error = out.error;
        job.failed_region = part.region_id;
    }
}

void Writer::run()
{
    for (;;) {
        std::unique_ptr<WriteJob> job;
        {
            std::unique_lock lock(m_mutex);
            m_cv.wait(lock, [&] { return m_finish || !m_queue.empty(); });
            if (m_queue.empty()) return;  // finishing, and everything is written
            job = std::move(m_queue.front());
            m_queue.pop_front();
        }
        for (WriteJob::Part& part : job->parts) {
            if (part.cache) {
                write_cache(*job, part);
                continue;
            }
            const auto out = m_writeback.write(*part.mem, part.runs);
            job->pages += out.pages;
            job->bytes += out.bytes;
            if (out.error) {
                if (!job->error) {
                    job->error = out.error;
                    job->failed_region = part.region_id;
                }
                continue;  // its pages stay pending
            }
            if (part.clear_flushing)
                for (const PageRun& run : part.runs) part.mem->bitmap.clear_flushing(run.first, run.count);
        }
        job->parts.clear();  // lets go of the memfds and files now
        {
            std::lock_guard lock(m_mutex);
            m_done.push_back(std::move(job));
        }
        m_notify();
    }
}

}  // namespace pagerd::daemon
