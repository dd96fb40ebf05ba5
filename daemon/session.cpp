// Control messages of one client: decode, dispatch, one catch point, reply.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <thread>

#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"
#include "pagerd/util/uffd.hpp"
#include "store/file_store.hpp"
#include "store/nbd_store.hpp"
#include "store/uri.hpp"
#include "store/zero_store.hpp"
#include "worker.hpp"
#include "writeback.hpp"

namespace pagerd::daemon {
namespace {

// Thrown by request handlers; turned into an ERROR reply at the one catch point.
struct RequestError {
    proto::ErrorCode code;
    std::string text;
};

[[noreturn]] void reject(proto::ErrorCode code, std::string text)
{
    throw RequestError{code, std::move(text)};
}

constexpr std::uint64_t k_daemon_caps = proto::cap::FILE_STORE | proto::cap::PRIVATE_WRITABLE |
                                        proto::cap::UFFD_EVENTS | proto::cap::STATUS |
                                        proto::cap::SIGBUS_PAST_EOF | proto::cap::SHARED_WRITABLE |
                                        proto::cap::PREFETCH | proto::cap::FORK;
constexpr std::size_t k_max_prefetches = 64;  // queued per connection
constexpr unsigned k_messages_per_wakeup = 32;  // then other clients get their turn

bool is_userfaultfd(int fd)
{
    char link[64];
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
    if (n < 0) return false;
    link[n] = 0;
    return std::strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

std::string hex(std::uint64_t v)
{
    char b[32];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

void check_prefetch_policy(proto::Prefetch p)
{
    if (p != proto::Prefetch::SEQUENTIAL && p != proto::Prefetch::NONE && p != proto::Prefetch::ALL)
        reject(proto::ErrorCode::BAD_RANGE, "unknown prefetch policy " + std::to_string(static_cast<unsigned>(p)));
}

}  // namespace

void Worker::on_socket_readable(Client& c)
{
    for (unsigned i = 0; i < k_messages_per_wakeup && !c.closing && !c.paused && c.close_reason.empty(); ++i) {
        auto got = proto::receive(c.sock.get(), MSG_DONTWAIT);
        if (!got) {
            if (got.error().code != EAGAIN)
                close_client(c, "receive failed: " + got.error().message);
            return;
        }
        if (got->closed) {
            close_client(c, "connection closed by the client");
            return;
        }
        if (got->truncated) {
            send_reply(c, 0, proto::ErrorReply{proto::ErrorCode::MALFORMED,
                             "message or descriptors exceed the limits (4096 bytes, 2 descriptors)"});
            close_client(c, "oversized message");
            return;
        }
        auto msg = proto::decode(got->bytes, got->fds.size());
        if (!msg) {
            const auto& e = msg.error();
            const auto& b = got->bytes;  // answer with the request id when the header has one
            const std::uint32_t rid = b.size() >= proto::k_header_size
                                          ? b[12] | b[13] << 8 | b[14] << 16 | std::uint32_t{b[15]} << 24
                                          : 0;
            send_reply(c, rid, proto::ErrorReply{static_cast<proto::ErrorCode>(e.code), e.message});
            if (proto::is_framing_error(e)) close_client(c, "protocol violation: " + e.message);
            continue;  // got->fds close here
        }
        bool disconnect = false, deferred = false;
        proto::Body reply;
        try {
            reply = handle_request(c, *msg, got->fds, disconnect, deferred);
        } catch (const RequestError& e) {
            reply = proto::ErrorReply{e.code, e.text};
        } catch (const std::exception& e) {
            spdlog::error("client {}: {} failed: {}", c.serial, proto::type_name(proto::type_of(msg->body)), e.what());
            reply = proto::ErrorReply{proto::ErrorCode::INTERNAL, e.what()};
        }
        if (const auto* err = std::get_if<proto::ErrorReply>(&reply))
            spdlog::debug("client {}: {} rejected: {} {}", c.serial,
                          proto::type_name(proto::type_of(msg->body)),
                          proto::error_code_name(err->code), err->text);
        if (!deferred) send_reply(c, msg->request_id, std::move(reply));
        if (disconnect) close_client(c, "session ended by the daemon");
    }
    // Budget used up with messages possibly left: the re-armed poll fires again at once.
}

void Worker::send_reply(Client& c, std::uint32_t request_id, proto::Body body)
{
    util::UniqueFd fd = std::move(c.reply_fd);  // goes with this reply only, sent or not
    if (c.closing || !c.close_reason.empty()) return;
    std::vector<int> fds;
    if (fd && std::holds_alternative<proto::CacheMapped>(body)) fds.push_back(fd.get());
    const int err = proto::send_message(c.sock.get(), proto::Message{request_id, std::move(body)}, fds,
                                        MSG_DONTWAIT);
    if (!err) return;
    c.close_reason = err == EAGAIN ? "client does not read its replies" : std::string("send failed: ") + std::strerror(err);
    m_doomed.push_back(c.serial);
}

void Worker::resume_requests(Client& c)
{
    c.paused = false;
    if (!c.closing && !c.sock_op.armed) arm_poll(c, c.sock_op, c.sock.get());
}

proto::Body Worker::handle_request(Client& c, proto::Message& msg, std::vector<util::UniqueFd>& fds,
                                   bool& disconnect, bool& deferred)
{
    using namespace proto;
    if (!c.hello_done && !std::holds_alternative<Hello>(msg.body)) {
        disconnect = true;
        reject(ErrorCode::NOT_READY, "the first message must be HELLO");
    }
    if (auto* m = std::get_if<Hello>(&msg.body)) return on_hello(c, *m, disconnect);
    if (auto* m = std::get_if<RegisterUffd>(&msg.body)) return on_register(c, *m, std::move(fds.at(0)));
    if (auto* m = std::get_if<Map>(&msg.body)) return on_map(c, *m, std::move(fds.at(0)));
    if (auto* m = std::get_if<MapShared>(&msg.body))
        return on_map_shared(c, *m, std::move(fds.at(0)), std::move(fds.at(1)));
    if (auto* m = std::get_if<Unmap>(&msg.body)) return on_unmap(c, *m);
    if (auto* m = std::get_if<Flush>(&msg.body)) return on_flush(c, *m, msg.request_id, deferred);
    if (std::holds_alternative<StatusRequest>(msg.body)) return on_status(c);
    if (auto* m = std::get_if<RegionsRequest>(&msg.body)) return on_regions(c, *m);
    if (auto* m = std::get_if<CachesRequest>(&msg.body)) return on_caches(c, *m);
    if (auto* m = std::get_if<StoresRequest>(&msg.body)) return on_stores(c, *m);
    if (auto* m = std::get_if<MapStore>(&msg.body)) return on_map_store(c, *m, msg.request_id, deferred);
    if (auto* m = std::get_if<Ping>(&msg.body)) return Pong{m->nonce};
    if (auto* m = std::get_if<PrefetchRequest>(&msg.body)) return on_prefetch(c, *m, msg.request_id, deferred);
    reject(ErrorCode::UNKNOWN_TYPE,
           std::string(type_name(type_of(msg.body))) + " is sent by the daemon, not to it");
}

proto::Body Worker::on_hello(Client& c, const proto::Hello& m, bool& disconnect)
{
    if (c.hello_done) reject(proto::ErrorCode::NOT_READY, "HELLO was already received");
    const std::uint64_t caps =
        k_daemon_caps | (m_ctx.cache && m_ctx.cache->unavailable().empty()
                             ? proto::cap::CACHE | proto::cap::CACHE_SHARED | proto::cap::STORES
                             : 0);
    const std::uint64_t missing = m.required_caps & ~caps;
    if (missing) {
        std::string names;
        for (unsigned bit = 0; bit < 64; ++bit) {
            if (!(missing >> bit & 1)) continue;
            const char* n = proto::capability_name(bit);
            names += (names.empty() ? "" : ", ") + (n ? std::string(n) : "bit " + std::to_string(bit));
        }
        disconnect = true;
        reject(proto::ErrorCode::CAPABILITY, "this daemon lacks required capabilities: " + names);
    }
    c.hello_done = true;
    c.name = m.name;
    fdstore::save(c);
    spdlog::debug("client {}: HELLO from '{}'", c.serial, c.name);
    return proto::Welcome{caps, m_ctx.page_size, m_ctx.limits.max_regions_per_client.load(),
                          m_ctx.limits.max_mapped_bytes_per_client.load(), version_string()};
}

proto::Body Worker::on_register(Client& c, const proto::RegisterUffd& m, util::UniqueFd fd)
{
    using proto::ErrorCode;
    if (m.flags & ~proto::k_uffd_known_flags)
        reject(ErrorCode::BAD_RANGE, "unknown REGISTER_UFFD flags " + hex(m.flags & ~proto::k_uffd_known_flags));
    const unsigned slot = (m.flags & proto::k_uffd_async_wp) ? 1 : 0;
    if (slot == 1 && !c.uffds[0].fd)
        reject(ErrorCode::NOT_READY, "the main userfaultfd must be registered before the async one");
    if (c.uffds[slot].fd)
        reject(ErrorCode::NOT_READY, slot ? "an async userfaultfd is already registered on this connection"
                                          : "a userfaultfd is already registered on this connection");
    if (slot == 1 && !(m.features & UFFD_FEATURE_WP_ASYNC))
        reject(ErrorCode::BAD_RANGE, "the async userfaultfd must have UFFD_FEATURE_WP_ASYNC");
    if (!is_userfaultfd(fd.get()))
        reject(ErrorCode::BAD_DESCRIPTOR, "the descriptor sent with REGISTER_UFFD is not a userfaultfd");
    const int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK) < 0)
        reject(ErrorCode::BAD_DESCRIPTOR, std::string("cannot use the userfaultfd: ") + std::strerror(errno));
    auto& u = c.uffds[slot];
    u.fd = std::move(fd);
    u.features = m.features;
    u.op.client = &c;
    u.op.slot = slot;
    if (slot == 0) {
        c.uffd_flags = m.flags & proto::k_uffd_user_mode_only;
        if (c.uffd_flags & proto::k_uffd_user_mode_only)
            m_stats.user_mode_only_clients.fetch_add(1, std::memory_order_relaxed);
    }
    arm_poll(c, u.op, u.fd.get());
    fdstore::save(c);
    spdlog::info("client {}: {}userfaultfd registered (features {}, {})", c.serial, slot ? "async " : "",
                 hex(m.features), (m.flags & proto::k_uffd_user_mode_only) ? "user-mode only" : "full mode");
    return proto::Ok{};
}

// Checks of MAP and MAP_SHARED, in the order PROTOCOL.md gives.
void Worker::check_map_range(Client& c, std::uint64_t addr, std::uint64_t length, std::uint64_t file_offset,
                             int file_fd)
{
    struct stat st{};
    if (::fstat(file_fd, &st) != 0 || !S_ISREG(st.st_mode))
        reject(proto::ErrorCode::BAD_DESCRIPTOR, "the file descriptor is not a regular file");
    check_map_range(c, addr, length, file_offset, static_cast<std::uint64_t>(st.st_size), "file");
}

void Worker::check_map_range(Client& c, std::uint64_t addr, std::uint64_t length, std::uint64_t file_offset,
                             std::uint64_t size, const char* what)
{
    using proto::ErrorCode;
    const std::uint64_t page = m_ctx.page_size;
    if (length == 0) reject(ErrorCode::BAD_RANGE, "region length is zero");
    if (addr % page || length % page || file_offset % page)
        reject(ErrorCode::BAD_RANGE, "address, length and file offset must be multiples of the page size (" +
                                         std::to_string(page) + ")");
    if (addr + length < addr || file_offset + length < file_offset || addr + length > (std::uint64_t{1} << 57))
        reject(ErrorCode::BAD_RANGE, "region wraps around the address or offset space");
    const std::uint64_t file_pages_end = size > ~std::uint64_t{0} - page ? size : (size + page - 1) / page * page;
    if (file_offset + length > file_pages_end)
        reject(ErrorCode::PAST_EOF, "region [" + std::to_string(file_offset) + ", " +
                                        std::to_string(file_offset + length) + ") extends past the end of the " +
                                        what + " (" + std::to_string(size) + " bytes)");
    if (c.regions.overlaps(addr, length)) {
        // The client may have munmap'ed the old region and mapped this one before we read
        // the unmap event: take pending events, then judge.
        drain_events(c);
        if (c.regions.overlaps(addr, length))
            reject(ErrorCode::OVERLAP, "region at " + hex(addr) + " overlaps a region already mapped");
    }
    if (c.regions.count() >= m_ctx.limits.max_regions_per_client.load())
        reject(ErrorCode::LIMIT, "at most " + std::to_string(m_ctx.limits.max_regions_per_client.load()) +
                                     " regions per client");
    if (c.regions.bytes() + length > m_ctx.limits.max_mapped_bytes_per_client.load())
        reject(ErrorCode::LIMIT, "at most " + std::to_string(m_ctx.limits.max_mapped_bytes_per_client.load()) +
                                     " bytes mapped per client");
}

void Worker::add_region(Client& c, Region r)
{
    spdlog::debug("client {}: region {} at {} length {} file offset {} ({}{})", c.serial, r.id, hex(r.start),
                  r.length, r.file_offset, r.shared() ? "shared" : r.access == proto::Access::PRIVATE_WRITABLE ? "private-writable" : "read-only",
                  r.shared() ? std::string(", tracking ") + std::to_string(static_cast<int>(r.tracking)) : "");
    const std::uint64_t start = r.start;
    change_table(c, [&](RegionTable& t) {
        t.insert(std::move(r));
        return 0;
    });
    const Region* added = c.regions.find(start);
    // The fill, behind faults. A CACHE region's waits for the client's PREFETCH after it
    // registered the range: only then can the pages be mapped as they are loaded.
    if (added && added->state->prefetch == proto::Prefetch::ALL && !added->cache)
        queue_prefetch(c, *added, added->start, added->end(), nullptr);
}

// A Shared region in the page cache: the client writes into the cache, which the daemon
// writes back to the file, so the file must be open for writing (and pwrite must land
// where it is told: no O_APPEND), and the uffd must report write-protect faults on shmem.
void Worker::check_shared_cache_map(Client& c, const proto::Map& m, int fl)
{
    using proto::ErrorCode;
    if (!(m.flags & proto::k_map_cache) || (m.flags & proto::k_map_private_writable))
        reject(ErrorCode::BAD_RANGE, "MAP flag SHARED needs CACHE and excludes PRIVATE_WRITABLE");
    if ((fl & O_ACCMODE) != O_RDWR || (fl & O_APPEND))
        reject(ErrorCode::BAD_DESCRIPTOR, "a Shared region needs its file open O_RDWR (and not O_APPEND)");
    if (fl & O_DIRECT)
        reject(ErrorCode::BAD_DESCRIPTOR, "a Shared region's file must not be open with O_DIRECT");
    constexpr std::uint64_t wp = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    if ((c.uffds[0].features & wp) != wp)
        reject(ErrorCode::NOT_READY, "a Shared CACHE region needs write-protect faults on shared memory "
                                     "(UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_WP_HUGETLBFS_SHMEM)");
}

proto::Body Worker::on_map(Client& c, const proto::Map& m, util::UniqueFd fd)
{
    using proto::ErrorCode;
    if (!c.uffds[0].fd) reject(ErrorCode::NOT_READY, "MAP before REGISTER_UFFD");
    const int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || (fl & O_PATH) || (fl & O_ACCMODE) == O_WRONLY)
        reject(ErrorCode::BAD_DESCRIPTOR, "the file descriptor sent with MAP is not open for reading");
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        reject(ErrorCode::BAD_DESCRIPTOR, "the file descriptor is not a regular file");
    if (m.flags & ~proto::k_map_known_flags)
        reject(ErrorCode::BAD_RANGE, "unknown MAP flags " + hex(m.flags & ~proto::k_map_known_flags));
    check_prefetch_policy(m.prefetch);
    const bool cached = (m.flags & proto::k_map_cache) != 0;
    const bool shared = (m.flags & proto::k_map_shared) != 0;
    if (cached && !(c.uffds[0].features & UFFD_FEATURE_MINOR_SHMEM))
        reject(ErrorCode::NOT_READY, "a CACHE region needs UFFD_FEATURE_MINOR_SHMEM on the userfaultfd");
    if (shared) check_shared_cache_map(c, m, fl);
    check_map_range(c, m.addr, m.length, m.file_offset, fd.get());
    std::string why;
    std::shared_ptr<store::Store> file = store::FileStore::open(std::move(fd), why);
    if (!file) reject(ErrorCode::BAD_DESCRIPTOR, why);
    return add_mapped(c, m.addr, m.length, m.file_offset, m.flags, m.prefetch, std::move(file));
}

// MAP and MAP_STORE, checked: the region of `store`, in its page cache with flag CACHE
// (reply CACHE_MAPPED with the cache's descriptor), else copied into (reply MAPPED).
proto::Body Worker::add_mapped(Client& c, std::uint64_t addr, std::uint64_t length, std::uint64_t offset,
                               std::uint32_t flags, proto::Prefetch prefetch, std::shared_ptr<store::Store> store)
{
    const bool cached = (flags & proto::k_map_cache) != 0;
    const bool shared = (flags & proto::k_map_shared) != 0;
    std::shared_ptr<Cache> cache;
    util::UniqueFd cache_fd;
    if (cached) {
        std::string why;
        cache = m_ctx.cache->open(*store, offset + length, why);
        if (cache && shared && !cache->make_writable(store, why)) cache.reset();
        if (cache) cache_fd = shared ? cache->open_read_write(why) : cache->open_read_only(why);
        if (!cache_fd) reject(proto::ErrorCode::LIMIT, std::string("no page cache for this ") + store->kind() + ": " + why);
    }
    Region r;
    r.id = c.next_region_id++;
    r.start = addr;
    r.length = length;
    r.file_offset = offset;
    r.access = shared ? proto::Access::SHARED
               : (flags & proto::k_map_private_writable) ? proto::Access::PRIVATE_WRITABLE
                                                        : proto::Access::READ_ONLY;
    r.tracking = shared ? proto::Tracking::UFFD_WP : proto::Tracking::NONE;  // the daemon tracks writes
    r.store = std::move(store);
    r.cache = std::move(cache);
    r.state->prefetch = prefetch;
    add_region(c, std::move(r));
    if (!cached) return proto::Mapped{c.next_region_id - 1};
    c.reply_fd = std::move(cache_fd);
    return proto::CacheMapped{c.next_region_id - 1};
}

proto::Body Worker::on_map_shared(Client& c, const proto::MapShared& m, util::UniqueFd file, util::UniqueFd memfd)
{
    using proto::ErrorCode;
    using proto::Tracking;
    const std::uint64_t page = m_ctx.page_size;
    if (m.tracking != Tracking::UFFD_WP && m.tracking != Tracking::SEGV && m.tracking != Tracking::ASYNC)
        reject(ErrorCode::BAD_RANGE, "unknown tracking " + std::to_string(static_cast<int>(m.tracking)));
    const unsigned slot = m.tracking == Tracking::ASYNC ? 1 : 0;
    if (!c.uffds[slot].fd)
        reject(ErrorCode::NOT_READY, slot ? "SHARED_MAP with async tracking before the async REGISTER_UFFD"
                                          : "SHARED_MAP before REGISTER_UFFD");
    if (m.tracking == Tracking::UFFD_WP && !(c.uffds[0].features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
        reject(ErrorCode::BAD_RANGE, "uffd-wp tracking needs a userfaultfd with write-protect for shared memory");
    const int fl = ::fcntl(file.get(), F_GETFL);
    if (fl < 0 || (fl & O_PATH) || (fl & O_ACCMODE) != O_RDWR)
        reject(ErrorCode::BAD_DESCRIPTOR, "the file of a shared region must be open for reading and writing");
    if (fl & O_DIRECT)
        reject(ErrorCode::BAD_DESCRIPTOR, "the file of a shared region must not be open with O_DIRECT (its last "
                                          "partial page could not be written back)");
    if (const char* why = SharedMemory::unusable(memfd.get()))
        reject(ErrorCode::BAD_DESCRIPTOR, std::string("the second descriptor of SHARED_MAP: ") + why);
    check_prefetch_policy(m.prefetch);
    check_map_range(c, m.addr, m.length, m.file_offset, file.get());
    ErrorCode code{};
    std::string why;
    auto mem = SharedMemory::map(std::move(memfd), m.length, page, code, why);
    if (!mem) reject(code, why);
    mem->store = store::FileStore::open(std::move(file), why);
    if (!mem->store) reject(ErrorCode::BAD_DESCRIPTOR, why);
    mem->file_base = m.file_offset;
    Region r;
    r.id = c.next_region_id++;
    r.start = m.addr;
    r.length = m.length;
    r.file_offset = m.file_offset;
    r.access = proto::Access::SHARED;
    r.tracking = m.tracking;
    r.uffd_slot = slot;
    r.store = mem->store;
    r.mem = std::move(mem);
    r.state->prefetch = m.prefetch;
    add_region(c, std::move(r));
    return proto::Mapped{c.next_region_id - 1};
}

proto::Body Worker::on_unmap(Client& c, const proto::Unmap& m)
{
    if (m.region_id == 0 || m.region_id >= c.next_region_id)
        reject(proto::ErrorCode::NO_SUCH_REGION, "region " + std::to_string(m.region_id) +
                                                     " was never mapped on this connection");
    auto pieces = change_table(c, [&](RegionTable& t) { return t.remove_id(m.region_id); });
    forget(c, std::move(pieces), "unmapped");
    fdstore::forget_region(c, m.region_id);
    return proto::Ok{};
}

proto::Body Worker::on_flush(Client& c, const proto::Flush& m, std::uint32_t request_id, bool& deferred)
{
    if (m.region_id >= c.next_region_id)
        reject(proto::ErrorCode::NO_SUCH_REGION, "region " + std::to_string(m.region_id) +
                                                     " was never mapped on this connection");
    auto job = new_write_job(c, "flush");
    c.regions.for_each([&](const Region& r) {
        if (r.shared() && (m.region_id == 0 || r.id == m.region_id)) collect_flush(c, r, *job);
    });
    if (job->parts.empty()) return proto::Flushed{};
    // Written on the writer's thread; on_written answers. Meanwhile faults are served and
    // no further request of this connection is read, so replies keep their order.
    job->reply = true;
    job->request_id = request_id;
    m_writer->submit(std::move(job));
    c.flush_pending = true;
    c.paused = true;
    deferred = true;
    return proto::Ok{};
}

// Every client's regions for root and the daemon's own user; others see their own uid's.
proto::Body Worker::on_regions(Client& c, const proto::RegionsRequest& m)
{
    const bool admin = c.peer.uid == 0 || c.peer.uid == ::geteuid();
    std::vector<proto::RegionEntry> all;
    for (Worker* w : m_ctx.workers) w->list_regions(all, admin ? -1 : static_cast<long>(c.peer.uid));
    proto::RegionsReply reply;
    reply.total = static_cast<std::uint32_t>(all.size());
    reply.first = m.first;
    for (std::size_t i = m.first; i < all.size() && reply.entries.size() < proto::k_max_region_entries; ++i)
        reply.entries.push_back(all[i]);
    return reply;
}

proto::Body Worker::on_caches(Client& c, const proto::CachesRequest& m)
{
    const bool admin = c.peer.uid == 0 || c.peer.uid == ::geteuid();
    std::map<std::uint32_t, CacheUse> uses;
    for (Worker* w : m_ctx.workers) {
        std::map<std::uint32_t, CacheUse> one;
        w->list_caches(one, admin ? -1 : static_cast<long>(c.peer.uid));
        for (auto& [id, u] : one) {
            CacheUse& all = uses[id];
            all.cache = u.cache;
            all.clients.insert(u.clients.begin(), u.clients.end());
            all.regions += u.regions;
        }
    }
    proto::CachesReply reply;
    reply.total = static_cast<std::uint32_t>(uses.size());
    reply.index = m.index;
    if (m.index < uses.size()) {
        const CacheUse& u = std::next(uses.begin(), m.index)->second;
        reply.dev = u.cache->dev();
        reply.ino = u.cache->ino();
        reply.size = u.cache->size();
        reply.resident = u.cache->resident_pages() * m_ctx.page_size;
        reply.clients = static_cast<std::uint32_t>(u.clients.size());
        reply.regions = u.regions;
        reply.dirty = u.cache->dirty_pages() * m_ctx.page_size;
    }
    return reply;
}

proto::Body Worker::on_stores(Client& c, const proto::StoresRequest& m)
{
    const bool admin = c.peer.uid == 0 || c.peer.uid == ::geteuid();
    std::map<store::Identity, std::shared_ptr<store::Store>> all;
    for (Worker* w : m_ctx.workers) w->list_stores(all, admin ? -1 : static_cast<long>(c.peer.uid));
    proto::StoresReply reply;
    reply.total = static_cast<std::uint32_t>(all.size());
    reply.index = m.index;
    if (m.index < all.size()) {
        const store::Store& s = *std::next(all.begin(), m.index)->second;
        const store::Stats& st = s.stats();
        auto get = [](const auto& v) { return v.load(std::memory_order_relaxed); };
        reply.kind = s.kind();
        reply.uri = s.name();
        reply.size = static_cast<std::uint64_t>(std::max<std::int64_t>(s.size(), 0));
        reply.connections = get(st.connections);
        reply.inflight = get(st.inflight);
        reply.reads = get(st.reads);
        reply.read_bytes = get(st.read_bytes);
        reply.read_errors = get(st.read_errors);
        reply.retries = get(st.retries);
        reply.timeouts = get(st.timeouts);
        reply.reconnects = get(st.reconnects);
        reply.writes = get(st.writes);
        reply.write_bytes = get(st.write_bytes);
        reply.write_errors = get(st.write_errors);
        reply.read_latency_avg_ns = reply.reads ? get(st.read_ns) / reply.reads : 0;
        reply.read_latency_max_ns = get(st.read_max_ns);
    }
    return reply;
}

// MAP_STORE, checks in the order PROTOCOL.md gives: the uffd, the flags and the range's
// shape, the URI (its syntax, the operator's allow list), then the store itself.
proto::Body Worker::on_map_store(Client& c, const proto::MapStore& m, std::uint32_t request_id, bool& deferred)
{
    using proto::ErrorCode;
    if (!c.uffds[0].fd) reject(ErrorCode::NOT_READY, "MAP_STORE before REGISTER_UFFD");
    if (!m_ctx.cache || !m_ctx.cache->unavailable().empty())
        reject(ErrorCode::CAPABILITY, "stores need the page cache, which this daemon does not have");
    if (!(c.uffds[0].features & UFFD_FEATURE_MINOR_SHMEM))
        reject(ErrorCode::NOT_READY, "a store region needs UFFD_FEATURE_MINOR_SHMEM on the userfaultfd");
    if (m.flags & ~proto::k_map_known_flags)
        reject(ErrorCode::BAD_RANGE, "unknown MAP_STORE flags " + hex(m.flags & ~proto::k_map_known_flags));
    if (!(m.flags & proto::k_map_cache)) reject(ErrorCode::BAD_RANGE, "MAP_STORE needs flag CACHE");
    check_prefetch_policy(m.prefetch);
    const bool shared = (m.flags & proto::k_map_shared) != 0;
    if (shared) {
        if (m.flags & proto::k_map_private_writable)
            reject(ErrorCode::BAD_RANGE, "MAP flag SHARED excludes PRIVATE_WRITABLE");
        constexpr std::uint64_t wp = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        if ((c.uffds[0].features & wp) != wp)
            reject(ErrorCode::NOT_READY, "a Shared store region needs write-protect faults on shared memory");
    }
    // The range's shape now; its end once the store's size is known.
    check_map_range(c, m.addr, m.length, m.offset, ~std::uint64_t{0}, "store");
    if (const auto zero = store::zero_size(m.uri)) {
        if (shared)
            reject(ErrorCode::BAD_RANGE, "a zero store takes no Shared region (its written pages could never be "
                                         "evicted: they have nowhere to go)");
        if (*zero > (std::uint64_t{16} << 40)) reject(ErrorCode::BAD_RANGE, "a zero store has at most 16 TiB");
        // Every offset of it reads the same: a region starts at 0, and the store (and its
        // cache, the daemon's address space) spans the region only, whatever SIZE says.
        if (m.offset != 0) reject(ErrorCode::BAD_RANGE, "a zero store is mapped from offset 0");
        check_map_range(c, m.addr, m.length, m.offset, *zero, "store");
        return map_store(c, m, std::make_shared<store::ZeroStore>(m.length));
    }
    if (!store::split_uri(m.uri) || !store::is_nbd_scheme(store::split_uri(m.uri)->scheme))
        reject(ErrorCode::BAD_DESCRIPTOR, "not a store URI this daemon knows (nbd://, nbds://, nbd+unix://, "
                                          "nbds+unix://, zero:SIZE)");
    if (!store::allowed(m.uri, m_ctx.allowed_stores()))
        reject(ErrorCode::BAD_DESCRIPTOR, "store not allowed: no --allow-store prefix of the daemon matches " + m.uri);
    if (auto open = store::NbdStore::find(m.uri)) return map_store(c, m, std::move(open));
    // Connecting may wait for the network: a thread of its own does it, and this
    // connection's next requests wait meanwhile (its faults are served).
    deferred = true;
    c.paused = true;
    std::thread([box = m_opened, o = Opened{c.serial, request_id, m, nullptr, {}, false}, nbd = m_ctx.nbd]() mutable {
        o.store = store::NbdStore::open_shared(o.request.uri, nbd, o.why, o.timed_out);
        {
            std::lock_guard lock(box->mutex);
            box->done.push_back(std::move(o));
        }
        const std::uint64_t one = 1;
        (void)!::write(box->wake.get(), &one, sizeof one);
    }).detach();
    return proto::Ok{};
}

void Worker::store_opened(Opened& o)
{
    auto it = m_clients.find(o.client);
    if (it == m_clients.end() || it->second->closing) return;  // gone meanwhile
    Client& c = *it->second;
    proto::Body reply;
    try {
        if (!o.store)
            reject(o.timed_out ? proto::ErrorCode::TIMEOUT : proto::ErrorCode::IO_ERROR,
                   "cannot open " + o.request.uri + ": " + o.why);
        reply = map_store(c, o.request, std::move(o.store));
    } catch (const RequestError& e) {
        reply = proto::ErrorReply{e.code, e.text};
    } catch (const std::exception& e) {
        spdlog::error("client {}: MAP_STORE failed: {}", c.serial, e.what());
        reply = proto::ErrorReply{proto::ErrorCode::INTERNAL, e.what()};
    }
    send_reply(c, o.request_id, std::move(reply));
    resume_requests(c);
}

proto::Body Worker::map_store(Client& c, const proto::MapStore& m, std::shared_ptr<store::Store> s)
{
    using proto::ErrorCode;
    const bool shared = (m.flags & proto::k_map_shared) != 0;
    if (shared && !s->writable()) reject(ErrorCode::BAD_DESCRIPTOR, "the store is read-only: no Shared region");
    check_map_range(c, m.addr, m.length, m.offset, static_cast<std::uint64_t>(std::max<std::int64_t>(s->size(), 0)),
                    "store");
    return add_mapped(c, m.addr, m.length, m.offset, m.flags, m.prefetch, std::move(s));
}

proto::Body Worker::on_status(Client& c)
{
    proto::StatusReply s;
    std::vector<const Histogram*> hs;
    for (const WorkerStats* w : m_ctx.stats) {
        s.clients += w->clients.load(std::memory_order_relaxed);
        s.user_mode_only_clients += w->user_mode_only_clients.load(std::memory_order_relaxed);
        s.regions += w->regions.load(std::memory_order_relaxed);
        s.mapped_bytes += w->mapped_bytes.load(std::memory_order_relaxed);
        s.faults += w->faults.load(std::memory_order_relaxed);
        s.pages_installed += w->pages_installed.load(std::memory_order_relaxed);
        s.bytes_read += w->bytes_read.load(std::memory_order_relaxed);
        s.sigbus_faults += w->sigbus_faults.load(std::memory_order_relaxed);
        hs.push_back(&w->latency);
    }
    const auto lat = Histogram::summarize(hs.data(), static_cast<unsigned>(hs.size()));
    s.latency_p50_ns = lat.p50;
    s.latency_p99_ns = lat.p99;
    s.latency_max_ns = lat.max;
    s.workers = static_cast<std::uint32_t>(m_ctx.stats.size());
    s.uptime_ms = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - m_ctx.started).count());
    s.requester_flags = c.uffd_flags;
    s.requester_regions = c.regions.count();
    for (const WorkerStats* w : m_ctx.stats) {
        s.pages_prefetched += w->pages_prefetched.load(std::memory_order_relaxed);
        for (unsigned b = 0; b < proto::k_latency_buckets; ++b) s.latency_histogram[b] += w->latency.coarse(b);
    }
    s.version = version_string();
    const auto cache = m_ctx.cache->figures();
    s.cache_budget = cache.budget;
    s.cache_bytes = cache.bytes;
    s.cache_files = cache.files;
    s.cache_loads = cache.loads;
    s.cache_hits = cache.hits;
    s.cache_evictions = cache.evictions;
    s.cache_refaults = cache.refaults;
    s.cache_dirty_bytes = cache.dirty_bytes;
    s.cache_writebacks = cache.writebacks;
    return s;
}

proto::Body Worker::on_prefetch(Client& c, const proto::PrefetchRequest& m, std::uint32_t request_id, bool& deferred)
{
    using proto::ErrorCode;
    const std::uint64_t page = m_ctx.page_size;
    if (m.flags & ~proto::k_prefetch_known_flags)
        reject(ErrorCode::BAD_RANGE, "unknown PREFETCH flags " + hex(m.flags & ~proto::k_prefetch_known_flags));
    if (m.length == 0 || m.addr % page || m.length % page)
        reject(ErrorCode::BAD_RANGE, "PREFETCH address and length must be non-zero multiples of the page size");
    if (m.addr + m.length < m.addr) reject(ErrorCode::BAD_RANGE, "PREFETCH range overflows");
    const std::uint64_t end = m.addr + m.length;
    std::vector<const Region*> pieces;
    c.regions.for_each([&](const Region& r) {
        if (r.start < end && m.addr < r.end()) pieces.push_back(&r);
    });
    if (pieces.empty()) reject(ErrorCode::NO_SUCH_REGION, "PREFETCH range is outside every region of this connection");
    if (c.jobs.size() + pieces.size() > k_max_prefetches)
        reject(ErrorCode::LIMIT, std::to_string(c.jobs.size()) + " prefetches of this connection are queued already (at most " +
                                     std::to_string(k_max_prefetches) + ")");
    std::shared_ptr<PrefetchWaiter> waiter;
    if (m.flags & proto::k_prefetch_wait)
        waiter = std::make_shared<PrefetchWaiter>(PrefetchWaiter{request_id, static_cast<unsigned>(pieces.size())});
    for (const Region* r : pieces) queue_prefetch(c, *r, std::max(r->start, m.addr), std::min(r->end(), end), waiter);
    if (!waiter) return proto::Ok{};
    deferred = true;  // answered by end_job; no further request is read meanwhile
    c.paused = true;
    return proto::Ok{};
}

}  // namespace pagerd::daemon
