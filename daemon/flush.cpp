// Dirty pages of Shared regions to their files: on FLUSH, when a region leaves the
// table, and when its client dies. The worker only decides what to write; the writing
// runs on its Writer's thread (writeback.cpp), and the result comes back to on_written().
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "pagerd/util/uffd.hpp"
#include "worker.hpp"
#include "writeback.hpp"

namespace pagerd::daemon {

void Worker::collect_flush(Client& c, const Region& r, WriteJob& job)
{
    const std::uint64_t page = m_ctx.page_size;
    if (r.cache) {  // collected and protected in every view on the writer's thread
        job.parts.push_back(cache_part(r));
        return;
    }
    const std::uint64_t first = r.mem_offset / page, count = r.length / page;
    auto& bitmap = r.mem->bitmap;
    if (r.tracking == proto::Tracking::UFFD_WP) {
        // Collect, then protect: a write after the protection faults here and is dirty
        // again. (Sigsegv and Async regions were collected and protected by the client.)
        bitmap.collect(first, count, [&](std::uint64_t p, std::uint64_t n) {
            uffdio_writeprotect wp{{r.start + (p - first) * page, n * page}, UFFDIO_WRITEPROTECT_MODE_WP};
            if (::ioctl(c.uffds[r.uffd_slot].fd.get(), UFFDIO_WRITEPROTECT, &wp) != 0 && errno != ENOENT) {
                spdlog::warn("client {}: write-protecting {} pages at {:#x}: {}; they stay dirty", c.serial, n,
                             wp.range.start, std::strerror(errno));
                bitmap.restore_dirty(p, n);
            }
        });
    }
    WriteJob::Part part{r.mem, r.id, {}, true};
    bitmap.for_each_pending(first, count, false, [&](std::uint64_t p, std::uint64_t n) { part.runs.push_back({p, n}); });
    if (!part.runs.empty()) job.parts.push_back(std::move(part));
}

std::unique_ptr<WriteJob> Worker::new_write_job(const Client& c, const char* why)
{
    auto job = std::make_unique<WriteJob>();
    job->client = c.serial;
    job->pid = c.peer.pid;
    job->why = why;
    return job;
}

void Worker::forget(Client& c, std::vector<Region> pieces, const char* why)
{
    // Only what the client wrote, as its tracking recorded it: dirty and flushing pages.
    // (An Async region's writes since its last flush are known only to the client's page
    // tables: docs/writes.md says what such a client loses if it dies.)
    const std::uint64_t page = m_ctx.page_size;
    auto job = new_write_job(c, why);
    for (const Region& r : pieces) {
        if (!r.shared()) continue;
        if (r.cache) {  // what the file's dirty set holds in this range, whoever wrote it
            job->parts.push_back(cache_part(r));
            continue;
        }
        WriteJob::Part part{r.mem, r.id, {}, false};
        r.mem->bitmap.for_each_pending(r.mem_offset / page, r.length / page, true,
                                       [&](std::uint64_t p, std::uint64_t n) { part.runs.push_back({p, n}); });
        if (!part.runs.empty()) job->parts.push_back(std::move(part));
    }
    if (!job->parts.empty()) m_writer->submit(std::move(job));
}

WriteJob::Part Worker::cache_part(const Region& r) const
{
    WriteJob::Part part;
    part.region_id = r.id;
    part.cache = r.cache;
    part.first = r.file_offset / m_ctx.page_size;
    part.count = r.length / m_ctx.page_size;
    return part;
}

void Worker::on_written(const WriteJob& j)
{
    if (j.client == 0) {  // eviction's write-back
        m_ctx.cache->count_writebacks(j.pages);
        if (j.error) spdlog::error("page cache: {}: writing back failed: {}", j.why, std::strerror(j.error));
        return;
    }
    if (!j.reply) {
        if (j.error)
            spdlog::error("client {} (pid {}): {}: writing back region {} failed: {}", j.client, j.pid, j.why,
                          j.failed_region, std::strerror(j.error));
        if (j.pages)
            spdlog::info("client {} (pid {}): {}: wrote back {} dirty page(s), {} bytes", j.client, j.pid, j.why,
                         j.pages, j.bytes);
        return;
    }
    auto found = m_clients.find(j.client);
    if (found == m_clients.end()) return;  // gone meanwhile: nobody to answer
    Client& c = *found->second;
    if (j.error)
        send_reply(c, j.request_id, proto::ErrorReply{proto::ErrorCode::IO_ERROR,
                                                       "writing back region " + std::to_string(j.failed_region) +
                                                           " failed: " + std::strerror(j.error) +
                                                           " (its pages stay pending)"});
    else
        send_reply(c, j.request_id, proto::Flushed{j.pages, j.bytes});
    c.flush_pending = false;
    resume_requests(c);
    if (m_stopping) stop_client_when_idle(c);
}

}  // namespace pagerd::daemon
