// Regions backed by the daemon's page cache (capability CACHE; Shared ones: CACHE_SHARED):
// the pages live in the daemon's memfd of the file, shared with every other client of that
// file and charged to the daemon, so a client can read a file far larger than the memory it
// may use, and Shared clients of one file see each other's writes at once. See
// proto/PROTOCOL.md, "MAP".
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

#include "connection_impl.hpp"
#include "pagerd/proto/constants.hpp"
#include "pagerd/util/uffd.hpp"

namespace pagerd::libclient {

// PAGERD_CACHE=0 in the environment maps regions the old way (private anonymous memory
// the daemon copies into), for comparisons.
bool Connection::Impl::cache_usable() const
{
    const char* env = std::getenv("PAGERD_CACHE");
    if (env && std::strcmp(env, "0") == 0) return false;
    return (daemon_caps & proto::cap::CACHE) && (uffd_features & UFFD_FEATURE_MINOR_SHMEM);
}

// Caller holds layout_mutex.
Result<Region> Connection::Impl::map_cached(int fd, const MapOptions& o, const std::string* uri)
{
    // 1. Reserve the addresses: nothing registered yet, so no fault can reach the daemon
    //    before it knows the region.
    void* addr = ::mmap(o.addr, o.length, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (o.addr ? MAP_FIXED : 0), -1, 0);
    if (addr == MAP_FAILED) return sys_error("mmap of " + std::to_string(o.length) + " bytes");
    // 2. The region, and the cache's descriptor (read-only).
    const bool shared = o.access == Access::Shared;
    const std::uint32_t flags = proto::k_map_cache |
                                (o.access == Access::PrivateWritable ? proto::k_map_private_writable : 0u) |
                                (shared ? proto::k_map_shared : 0u);
    std::vector<util::UniqueFd> fds;
    // A store's first map connects the daemon to it: that may take up to the daemon's
    // --store-timeout-ms, so the reply is waited for as long as the daemon lives (the
    // monitor ends the wait if the daemon goes).
    auto reply = uri ? request(proto::MapStore{reinterpret_cast<std::uint64_t>(addr), o.length, o.offset, flags,
                                               to_wire(o.prefetch), *uri},
                               {}, -1, &fds)
                     : request(proto::Map{reinterpret_cast<std::uint64_t>(addr), o.length, o.offset, flags,
                                          to_wire(o.prefetch)},
                               std::span<const int>(&fd, 1), 0, &fds);
    const auto* mapped = reply ? std::get_if<proto::CacheMapped>(&reply->body) : nullptr;
    if (!mapped || fds.size() != 1) {
        ::munmap(addr, o.length);
        if (!reply) return reply.error();
        if (const auto* plain = std::get_if<proto::Mapped>(&reply->body)) (void)request(proto::Unmap{plain->region_id});
        if (mapped) (void)request(proto::Unmap{mapped->region_id});
        return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered MAP CACHE with something other than "
                                                            "CACHE_MAPPED and a descriptor");
    }
    const std::uint64_t id = mapped->region_id;
    auto undo = [&](Error e) -> Result<Region> {
        ::munmap(addr, o.length);
        (void)request(proto::Unmap{id});
        return e;
    };
    // 3. The cache at the reserved addresses, private: writes of a PrivateWritable region
    //    are the client's own copies; a Shared region's write the cache's own pages.
    //    Registered MISSING (the cache lacks the page) and MINOR (it holds it), both
    //    answered by the daemon; a Shared one WP too: the daemon records each first write.
    const int prot = PROT_READ | (o.access != Access::ReadOnly ? PROT_WRITE : 0);
    if (::mmap(addr, o.length, prot, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED | MAP_NORESERVE, fds[0].get(),
               static_cast<off_t>(o.offset)) == MAP_FAILED)
        return undo(sys_error("mmap of the daemon's cache"));
    // A forked child keeps the region: its faults reach the daemon through the child's own
    // userfaultfd (UFFD_FEATURE_EVENT_FORK), never the cache directly.
    keep_from_child(addr, o.length);
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(addr);
    reg.range.len = o.length;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR | (shared ? UFFDIO_REGISTER_MODE_WP : 0);
    if (::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) != 0) return undo(sys_error("UFFDIO_REGISTER", errno));
    // 4. Prefetch::All: the fill starts now, so that every page is mapped as it is loaded.
    if (o.prefetch == Prefetch::All)
        if (auto fill = request(proto::PrefetchRequest{reg.range.start, o.length, 0}); !fill) return undo(fill.error());
    Region r{id, addr, o.length, o.access, shared ? Tracking::UffdWp : Tracking::Auto};
    Mapping m{r};
    if (shared && fd >= 0) {  // for a forked child's flush (fork.cpp)
        m.file = std::make_shared<util::UniqueFd>(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        m.file_offset = o.offset;
    }
    std::lock_guard lock(regions_mutex);
    regions.emplace(r.id, std::move(m));
    return r;
}

}  // namespace pagerd::libclient
