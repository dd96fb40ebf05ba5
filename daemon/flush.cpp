// Dirty pages of Shared regions to their files: on FLUSH, when a region leaves the
// table, and when its client dies.
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "pagerd/util/uffd.hpp"
#include "worker.hpp"
#include "writeback.hpp"

namespace pagerd::daemon {

proto::Flushed Worker::flush_region(Client& c, const Region& r)
{
    const std::uint64_t page = m_ctx.page_size;
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
    std::vector<PageRun> runs;
    bitmap.for_each_pending(first, count, false, [&](std::uint64_t p, std::uint64_t n) { runs.push_back({p, n}); });
    if (runs.empty()) return {};
    const auto out = m_writeback->write(*r.mem, runs);
    if (out.error)
        throw std::runtime_error("writing back region " + std::to_string(r.id) + " failed: " +
                                 std::strerror(out.error) + " (its pages stay pending)");
    for (const PageRun& run : runs) bitmap.clear_flushing(run.first, run.count);
    return {out.pages, out.bytes};
}

void Worker::forget(Client& c, std::vector<Region> pieces, bool all_present, const char* why)
{
    const std::uint64_t page = m_ctx.page_size;
    std::uint64_t pages = 0, bytes = 0;
    for (const Region& r : pieces) {
        if (!r.shared()) continue;
        const std::uint64_t first = r.mem_offset / page, count = r.length / page;
        std::vector<PageRun> runs;
        if (all_present && r.tracking == proto::Tracking::ASYNC)
            runs.push_back({first, count});  // every page the memfd holds
        else
            r.mem->bitmap.for_each_pending(first, count, true, [&](std::uint64_t p, std::uint64_t n) {
                runs.push_back({p, n});
            });
        if (runs.empty()) continue;
        const auto out = m_writeback->write(*r.mem, runs);
        if (out.error)
            spdlog::error("client {}: writing back region {} ({}) failed: {}", c.serial, r.id, why,
                          std::strerror(out.error));
        pages += out.pages;
        bytes += out.bytes;
    }
    if (pages)
        spdlog::info("client {} (pid {}): {}: wrote back {} dirty page(s), {} bytes", c.serial, c.peer.pid, why,
                     pages, bytes);
}

}  // namespace pagerd::daemon
