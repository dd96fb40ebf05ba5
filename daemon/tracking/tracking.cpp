#include "tracking.hpp"

#include <spdlog/spdlog.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "pagerd/util/uffd.hpp"
#include "strategies.hpp"

namespace pagerd::daemon::tracking {

const Strategy* of(const Region& r)
{
    static const UffdWp uffd_wp;
    static const ClientSide sigsegv(false), async(true);
    static const CacheWp cache_wp;
    if (!r.shared()) return nullptr;
    if (r.cache) return &cache_wp;
    switch (r.tracking) {
    case proto::Tracking::UFFD_WP: return &uffd_wp;
    case proto::Tracking::ASYNC: return &async;
    case proto::Tracking::SEGV: return &sigsegv;
    case proto::Tracking::NONE: break;
    }
    return nullptr;
}

void unprotect(int uffd, std::uint64_t addr, std::uint32_t page_size)
{
    uffdio_writeprotect wp{{addr, page_size}, 0};
    if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0 || errno == ENOENT) return;
    if (errno != EAGAIN) spdlog::warn("lifting write protection at {:#x}: {}", addr, std::strerror(errno));
    util::uffd_wake(uffd, addr, page_size);  // never leave the writer waiting
}

}  // namespace pagerd::daemon::tracking
