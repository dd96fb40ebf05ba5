// Dirty pages of Shared regions to their files: on FLUSH, when a region leaves the
// table, and when its client dies. The worker only decides what to write (each region's
// tracking strategy says what: tracking/); the writing runs on its Writer's thread
// (writeback.cpp), and the result comes back to on_written().
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "tracking/tracking.hpp"
#include "worker.hpp"
#include "writeback.hpp"

namespace pagerd::daemon {

void Worker::collect_flush(Client& c, const Region& r, WriteJob& job)
{
    if (const tracking::Strategy* t = tracking::of(r))
        t->collect(c.uffds[r.uffd_slot].fd.get(), r, job, m_ctx.page_size);
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
    auto job = new_write_job(c, why);
    for (const Region& r : pieces)
        if (const tracking::Strategy* t = tracking::of(r)) t->forget(r, *job, m_ctx.page_size);
    if (!job->parts.empty()) m_writer->submit(std::move(job));
}

void Worker::on_written(const WriteJob& j)
{
    if (j.cache_written) m_ctx.cache->trim();  // pages written back can go now if over budget
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
