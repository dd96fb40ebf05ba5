// Shared regions: memfd memory that the daemon writes back to the file, and the
// client-side half of the three write-tracking strategies (docs/writes.md).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "connection_impl.hpp"
#include "pagerd/util/dirty_bitmap.hpp"
#include "pagerd/util/pagemap_scan.hpp"
#include "pagerd/util/uffd.hpp"
#include "segv_tracker.hpp"
#include "uffd_setup.hpp"

namespace pagerd::libclient {
namespace {

proto::Tracking to_wire(Tracking t)
{
    switch (t) {
    case Tracking::UffdWp: return proto::Tracking::UFFD_WP;
    case Tracking::Sigsegv: return proto::Tracking::SEGV;
    case Tracking::Async: return proto::Tracking::ASYNC;
    case Tracking::Auto: break;
    }
    return proto::Tracking::NONE;
}

constexpr std::uint64_t k_sync_wp = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;

}  // namespace

const char* tracking_name(Tracking t)
{
    switch (t) {
    case Tracking::Auto: return "auto";
    case Tracking::UffdWp: return "uffd-wp";
    case Tracking::Sigsegv: return "sigsegv";
    case Tracking::Async: return "async";
    }
    return "?";
}

Result<Tracking> Connection::Impl::choose_tracking(Tracking wanted)
{
    const bool async_ok = (uffd_available & UFFD_FEATURE_WP_ASYNC) && (uffd_available & k_sync_wp) == k_sync_wp;
    const bool wp_ok = (uffd_features & k_sync_wp) == k_sync_wp;
    switch (wanted) {
    // Not async: after a SIGKILL nobody can tell which of its pages were written since the
    // last flush (docs/writes.md). uffd-wp and sigsegv record every write as it happens.
    case Tracking::Auto: return wp_ok ? Tracking::UffdWp : Tracking::Sigsegv;
    case Tracking::UffdWp:
        if (!wp_ok) return Error::system(ENOTSUP, "uffd-wp tracking needs userfaultfd write-protection of shared memory (kernel 5.19+)");
        return wanted;
    case Tracking::Async:
        if (!async_ok) return Error::system(ENOTSUP, "async tracking needs UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (kernel 6.7+)");
        return wanted;
    case Tracking::Sigsegv: return wanted;
    }
    return Error::system(EINVAL, "unknown tracking");
}

Result<void> Connection::Impl::ensure_async_uffd()
{
    std::lock_guard lock(async_mutex);  // threads mapping their first Async regions at once
    if (async_uffd) return {};
    if (!pagemap) {
        pagemap.reset(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
        if (!pagemap) return sys_error("cannot open /proc/self/pagemap for PAGEMAP_SCAN");
    }
    auto u = create_uffd(true);
    if (!u) return u.error();
    const int fd = u->fd.get();
    auto reply = request(proto::RegisterUffd{u->features, proto::k_uffd_async_wp}, std::span<const int>(&fd, 1));
    if (!reply) return reply.error();
    async_uffd = std::move(u->fd);
    return {};
}

Result<Region> Connection::Impl::map_shared(int fd, const MapOptions& o)
{
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) != O_RDWR)
        return Error::system(EBADF, "a Shared region needs its file open for reading and writing (O_RDWR)");
    if (fl & O_DIRECT)
        return Error::system(EINVAL, "a Shared region's file must not be open with O_DIRECT (open it without)");
    auto tracking = choose_tracking(o.tracking);
    if (!tracking) return tracking.error();
    // uffd-wp, the daemon's strategy, works for every client of the file at once: such a
    // region lives in the daemon's page cache, shared with every other client of the file.
    // (Without room there, or with another strategy, it gets a memfd of its own.)
    if (*tracking == Tracking::UffdWp && cache_usable() && (daemon_caps & proto::cap::CACHE_SHARED)) {
        auto cached = map_cached(fd, o);
        if (cached || !(cached.error().is_daemon(proto::ErrorCode::LIMIT) ||
                        cached.error().is_daemon(proto::ErrorCode::NOT_READY)))
            return cached;
    }
    if (*tracking == Tracking::Async)
        if (auto r = ensure_async_uffd(); !r) return r.error();
    const std::uint64_t pages = o.length / page_size;
    const std::uint64_t bitmap_bytes = (util::DirtyBitmap::bytes(pages) + page_size - 1) / page_size * page_size;
    util::UniqueFd memfd(::memfd_create("pagerd-region", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!memfd) return sys_error("memfd_create");
    if (::ftruncate(memfd.get(), static_cast<off_t>(o.length + bitmap_bytes)) != 0) return sys_error("ftruncate of the memfd");
    // The daemon maps this memfd: sealed, it can never shrink under that mapping.
    if (::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) != 0) return sys_error("sealing the memfd");
    const int prot = *tracking == Tracking::Sigsegv ? PROT_READ : PROT_READ | PROT_WRITE;
    void* addr = ::mmap(o.addr, o.length, prot, MAP_SHARED | (o.addr ? MAP_FIXED : 0), memfd.get(), 0);
    if (addr == MAP_FAILED) return sys_error("mmap of " + std::to_string(o.length) + " bytes");
    void* bitmap = ::mmap(nullptr, bitmap_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(),
                          static_cast<off_t>(o.length));
    if (bitmap == MAP_FAILED) {
        const int err = errno;
        ::munmap(addr, o.length);
        return sys_error("mmap of the dirty bitmap", err);
    }
    // Memory of this process's own (its memfd, its handler's slot or its second
    // userfaultfd): a forked child does not get it (docs/fork.md).
    ::madvise(addr, o.length, MADV_DONTFORK);
    ::madvise(bitmap, bitmap_bytes, MADV_DONTFORK);
    auto undo = [&] {
        ::munmap(addr, o.length);
        ::munmap(bitmap, bitmap_bytes);
    };
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(addr);
    reg.range.len = o.length;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | (*tracking == Tracking::Sigsegv ? 0 : UFFDIO_REGISTER_MODE_WP);
    const int uffd_fd = *tracking == Tracking::Async ? async_uffd.get() : uffd.get();
    if (::ioctl(uffd_fd, UFFDIO_REGISTER, &reg) != 0) {
        const int err = errno;
        undo();
        return sys_error("UFFDIO_REGISTER of a Shared region", err);
    }
    const int fds[2] = {fd, memfd.get()};
    auto reply = request(proto::MapShared{reg.range.start, o.length, o.offset, to_wire(*tracking), to_wire(o.prefetch)}, fds);
    const auto* mapped = reply ? std::get_if<proto::Mapped>(&reply->body) : nullptr;
    if (!mapped) {
        undo();
        return reply ? Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered SHARED_MAP with something other than MAPPED") : reply.error();
    }
    Mapping m{Region{mapped->region_id, addr, o.length, Access::Shared, *tracking}, bitmap, bitmap_bytes, -1};
    if (*tracking == Tracking::Sigsegv) {
        auto slot = segv::add(reg.range.start, o.length, bitmap);
        if (!slot) {
            (void)request(proto::Unmap{m.region.id});
            undo();
            return slot.error();
        }
        m.segv_slot = slot.value();
    }
    std::lock_guard lock(regions_mutex);
    regions.emplace(m.region.id, m);
    return m.region;
}

Result<FlushResult> Connection::Impl::flush_mapping(const Mapping& m)
{
    const Region& r = m.region;
    if (r.access != Access::Shared) return FlushResult{};
    const std::uint64_t pages = r.size / page_size;
    util::DirtyBitmap bitmap(m.bitmap, pages);
    const auto base = reinterpret_cast<std::uintptr_t>(r.addr);
    if (r.tracking == Tracking::Sigsegv) {
        // Clear, then protect, then (in the daemon) read: a write before the protection
        // lands in what is read; a write after it faults and marks the page dirty again.
        bitmap.collect(0, pages, [&](std::uint64_t p, std::uint64_t n) {
            if (::mprotect(reinterpret_cast<void*>(base + p * page_size), n * page_size, PROT_READ) != 0)
                bitmap.restore_dirty(p, n);  // still writable: keep it dirty
        });
    } else if (r.tracking == Tracking::Async) {
        // The kernel knows which pages were written; PAGEMAP_SCAN reports them and
        // write-protects them again in one step. It also reports pages without a page
        // table entry as written: pages never loaded (a hole of the memfd), and written
        // pages whose entry MADV_DONTNEED dropped (still in the memfd). Only the second
        // are writes: a hole marked would be written back if the daemon loaded the page
        // (for a read) before the flush reached it, over what others wrote to the file.
        page_region vec[256];
        pm_scan_arg arg{};
        arg.size = sizeof arg;
        arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
        arg.start = base;
        arg.end = base + r.size;
        arg.vec = reinterpret_cast<std::uint64_t>(vec);
        arg.vec_len = 256;
        arg.category_mask = PAGE_IS_WRITTEN;
        arg.return_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT;
        std::vector<unsigned char> resident;
        while (arg.start < arg.end) {
            const int n = ::ioctl(pagemap.get(), PAGEMAP_SCAN, &arg);
            if (n < 0) return sys_error("PAGEMAP_SCAN");
            for (int i = 0; i < n; ++i) {
                const std::uint64_t first = (vec[i].start - base) / page_size;
                const std::uint64_t count = (vec[i].end - vec[i].start) / page_size;
                if (vec[i].categories & PAGE_IS_PRESENT) {
                    bitmap.add_flushing(first, count);
                    continue;
                }
                resident.assign(count, 0);  // in the memfd (mincore of shared memory), or a hole
                if (::mincore(reinterpret_cast<void*>(vec[i].start), count * page_size, resident.data()) != 0)
                    return sys_error("mincore");
                for (std::uint64_t k = 0; k < count; ++k)
                    if (resident[k] & 1) bitmap.add_flushing(first + k, 1);
            }
            if (arg.walk_end <= arg.start) break;
            arg.start = arg.walk_end;
        }
    }
    auto reply = request(proto::Flush{r.id}, {}, -1);  // as long as the writing takes
    if (!reply) return reply.error();
    const auto* f = std::get_if<proto::Flushed>(&reply->body);
    if (!f) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered FLUSH with something other than FLUSHED");
    return FlushResult{f->pages, f->bytes};
}

void Connection::Impl::release_mapping(Mapping& m)
{
    if (m.segv_slot >= 0) segv::remove(m.segv_slot);
    m.segv_slot = -1;
    if (m.bitmap) ::munmap(m.bitmap, m.bitmap_bytes);
    m.bitmap = nullptr;
}

}  // namespace pagerd::libclient
