// Write tracking: how the daemon learns that a Shared region's page was written, and which
// pages a flush, an unmap or a client's death writes back. One strategy per region, one
// per file in the page cache (every view of a cached file is tracked the same way); each
// strategy in a file of its own:
//   uffd_wp.cpp  the region's own memfd, tracked by the daemon with uffd-wp
//   client.cpp   the region's own memfd, tracked by the client (sigsegv, async)
//   cache_wp.cpp the file's page cache, tracked by the daemon with uffd-wp in every view
// All of them are stateless: the state is the region's dirty bitmap or the cache's dirty set.
#pragma once
#include <cstdint>

#include "../region_table.hpp"
#include "../writeback.hpp"

namespace pagerd::daemon::tracking {

class Strategy {
public:
    virtual ~Strategy() = default;
    // Pages of the region are installed write-protected (its first write faults).
    virtual bool install_protected() const = 0;
    // The first write to `page` of r, through the userfaultfd `uffd` (a write-protect
    // fault, or a fault whose first touch is a write): the page is recorded as written
    // and made writable, which wakes the writer. Returns false when the daemon does not
    // track writes of this region (the caller lets the write through).
    virtual bool written(int uffd, const Region& r, std::uint64_t page, std::uint32_t page_size) const = 0;
    // FLUSH of r: what to write, added to job (protecting the pages again where the
    // daemon does that on the worker; the cache strategy does it on the writer).
    virtual void collect(int uffd, const Region& r, WriteJob& job, std::uint32_t page_size) const = 0;
    // r leaves the table (unmap, munmap, the client's death): everything written and not
    // yet in the file.
    virtual void forget(const Region& r, WriteJob& job, std::uint32_t page_size) const = 0;
    virtual std::uint64_t dirty_pages(const Region& r, std::uint32_t page_size) const = 0;
};

// The strategy of a Shared region (null for ReadOnly and PrivateWritable ones).
const Strategy* of(const Region& r);

// Lifts the write protection of one page, which wakes the writer; while the client's
// address space changes (EAGAIN) it only wakes it: it writes again and faults again.
void unprotect(int uffd, std::uint64_t addr, std::uint32_t page_size);

}  // namespace pagerd::daemon::tracking
