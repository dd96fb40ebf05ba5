// Tracking in the client (sigsegv: its SIGSEGV handler marks the region's dirty bitmap;
// async: its PAGEMAP_SCAN collects the written pages into it at flush). The daemon writes
// what the bitmap says: at a flush the pages the client moved to flushing, at an unmap or
// death the dirty ones too.
#include "strategies.hpp"

namespace pagerd::daemon::tracking {

bool ClientSide::written(int uffd, const Region&, std::uint64_t page, std::uint32_t page_size) const
{
    unprotect(uffd, page, page_size);  // not a write the daemon tracks: let it through
    return false;
}

void ClientSide::collect(int, const Region& r, WriteJob& job, std::uint32_t page_size) const
{
    WriteJob::Part part{r.mem, r.id, {}, true};
    r.mem->bitmap.for_each_pending(r.mem_offset / page_size, r.length / page_size, false,
                                   [&](std::uint64_t p, std::uint64_t n) { part.runs.push_back({p, n}); });
    if (!part.runs.empty()) job.parts.push_back(std::move(part));
}

void ClientSide::forget(const Region& r, WriteJob& job, std::uint32_t page_size) const
{
    // Only what the client wrote, as its tracking recorded it: dirty and flushing pages.
    // (An async region's writes since its last flush are known only to the client's page
    // tables: docs/writes.md says what such a client loses if it dies.)
    WriteJob::Part part{r.mem, r.id, {}, false};
    r.mem->bitmap.for_each_pending(r.mem_offset / page_size, r.length / page_size, true,
                                   [&](std::uint64_t p, std::uint64_t n) { part.runs.push_back({p, n}); });
    if (!part.runs.empty()) job.parts.push_back(std::move(part));
}

std::uint64_t ClientSide::dirty_pages(const Region& r, std::uint32_t page_size) const
{
    return r.mem->bitmap.count_dirty(r.mem_offset / page_size, r.length / page_size);
}

}  // namespace pagerd::daemon::tracking
