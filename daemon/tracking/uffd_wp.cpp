// uffd-wp on a region's own memfd: the daemon installs pages write-protected, marks the
// region's dirty bitmap on the first write, and protects the pages again when a flush
// collects them.
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "pagerd/util/uffd.hpp"
#include "strategies.hpp"

namespace pagerd::daemon::tracking {

bool UffdWp::written(int uffd, const Region& r, std::uint64_t page, std::uint32_t page_size) const
{
    // Dirty first, then writable: a flush that protects the page again sees the bit.
    r.mem->bitmap.mark((r.mem_offset + (page - r.start)) / page_size);
    unprotect(uffd, page, page_size);
    return true;
}

void UffdWp::collect(int uffd, const Region& r, WriteJob& job, std::uint32_t page_size) const
{
    const std::uint64_t first = r.mem_offset / page_size, count = r.length / page_size;
    auto& bitmap = r.mem->bitmap;
    // Collect, then protect: a write after the protection faults and is dirty again.
    bitmap.collect(first, count, [&](std::uint64_t p, std::uint64_t n) {
        uffdio_writeprotect wp{{r.start + (p - first) * page_size, n * page_size}, UFFDIO_WRITEPROTECT_MODE_WP};
        if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0 && errno != ENOENT) {
            spdlog::warn("write-protecting {} pages at {:#x}: {}; they stay dirty", n, wp.range.start,
                         std::strerror(errno));
            bitmap.restore_dirty(p, n);
        }
    });
    ClientSide::collect(uffd, r, job, page_size);  // then the flushing pages are written alike
}

}  // namespace pagerd::daemon::tracking
