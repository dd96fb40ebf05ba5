// uffd-wp on the file's page cache (cache_writes.cpp holds the dirty set): every Shared
// view of the file is tracked by the daemon; write-back collects on the writer thread,
// protecting the pages again in every view first.
#include "../cache.hpp"
#include "strategies.hpp"

namespace pagerd::daemon::tracking {

bool CacheWp::written(int uffd, const Region& r, std::uint64_t page, std::uint32_t page_size) const
{
    r.cache->mark_written(uffd, page, (r.file_offset + (page - r.start)) / page_size);
    return true;
}

void CacheWp::collect(int, const Region& r, WriteJob& job, std::uint32_t page_size) const { forget(r, job, page_size); }

void CacheWp::forget(const Region& r, WriteJob& job, std::uint32_t page_size) const
{
    // What the file's dirty set holds in this range, whoever wrote it.
    WriteJob::Part part;
    part.region_id = r.id;
    part.cache = r.cache;
    part.first = r.file_offset / page_size;
    part.count = r.length / page_size;
    job.parts.push_back(std::move(part));
}

std::uint64_t CacheWp::dirty_pages(const Region& r, std::uint32_t page_size) const
{
    return r.cache->dirty_pages(r.file_offset / page_size, r.length / page_size);
}

}  // namespace pagerd::daemon::tracking
