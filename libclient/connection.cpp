#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "connection_impl.hpp"
#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"
#include "pagerd/util/uffd.hpp"
#include "segv_tracker.hpp"
#include "uffd_setup.hpp"

namespace pagerd::libclient {

static_assert(std::string_view(k_default_socket) == proto::k_default_socket_path);
static_assert(k_latency_buckets == proto::k_latency_buckets);

namespace {

constexpr std::uint64_t k_required_caps = proto::cap::FILE_STORE | proto::cap::UFFD_EVENTS;

std::string missing_caps(std::uint64_t missing)
{
    std::string names;
    for (unsigned bit = 0; bit < 64; ++bit) {
        if (!(missing >> bit & 1)) continue;
        const char* n = proto::capability_name(bit);
        names += (names.empty() ? "" : ", ") + (n ? std::string(n) : "bit " + std::to_string(bit));
    }
    return names;
}

Result<util::UniqueFd> dial(const std::string& path)
{
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path)
        return Error::system(ENAMETOOLONG, "socket path '" + path + "' is empty or too long");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    util::UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!s) return sys_error("socket");
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        const int err = errno;
        if (err == ENOENT || err == ECONNREFUSED)
            return Error::system(err, "cannot connect to pagerd at " + path + ": " + std::strerror(err) +
                                          " (is pagerd running? set PAGERD_SOCKET or pass the socket path)");
        return sys_error("cannot connect to pagerd at " + path, err);
    }
    return s;
}

}  // namespace

std::string resolve_socket_path(const std::string& argument)
{
    if (!argument.empty()) return argument;
    const char* env = std::getenv("PAGERD_SOCKET");
    return env && *env ? env : k_default_socket;
}

// After the daemon closed the connection, the reason it gave may still be queued: a
// socket reports ECONNRESET once, then hands out what was left in its queue.
static Error closed_reason(int sock, Error fallback)
{
    for (int i = 0; i < 2; ++i) {
        auto got = proto::receive(sock, MSG_DONTWAIT);
        if (!got || got->closed) continue;
        auto msg = proto::decode(got->bytes, got->fds.size());
        if (!msg) break;
        if (auto* e = std::get_if<proto::ErrorReply>(&msg->body))
            return Error::daemon(e->code, "pagerd: " + e->text);
    }
    return fallback;
}

Result<proto::Message> Connection::Impl::request(proto::Body body, std::span<const int> fds, int wait_ms,
                                                 std::vector<util::UniqueFd>* fds_out)
{
    // A forked child must not touch request_mutex: a thread of the parent may have held it.
    if (forked.load())
        return Error::system(ENOTCONN, "this connection to pagerd belongs to the process that made it; "
                                       "a child made by fork() connects anew");
    std::lock_guard lock(request_mutex);
    if (!alive.load()) return Error::system(ENOTCONN, "the connection to pagerd was lost");
    const std::uint32_t id = next_request_id++;
    const auto type = proto::type_of(body);
    if (int err = proto::send_message(sock.get(), proto::Message{id, std::move(body)}, fds))
        return closed_reason(sock.get(), sys_error(std::string("sending ") + proto::type_name(type) + " to pagerd", err));
    const int budget = wait_ms ? wait_ms : timeout_ms;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(budget);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now()).count();
        pollfd p{sock.get(), POLLIN, 0};
        const int r = ::poll(&p, 1, budget < 0 ? -1 : left > 0 ? static_cast<int>(left) : 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return sys_error("poll");
        if (r == 0)
            return Error::system(ETIMEDOUT, std::string("pagerd did not answer ") + proto::type_name(type) +
                                                " within " + std::to_string(timeout_ms) + " ms");
        auto got = proto::receive(sock.get());
        if (!got) return closed_reason(sock.get(), sys_error("receiving from pagerd", got.error().code));
        if (got->closed) return Error::system(ECONNRESET, "pagerd closed the connection");
        auto msg = proto::decode(got->bytes, got->fds.size());
        // The decoder says what is wrong with the reply (MALFORMED, UNKNOWN_TYPE, BAD_DESCRIPTOR).
        if (!msg) return Error(ErrorDomain::Protocol, msg.error().code, "bad reply from pagerd: " + msg.error().message);
        if (auto* e = std::get_if<proto::ErrorReply>(&msg->body); e && (msg->request_id == id || msg->request_id == 0))
            return Error::daemon(e->code, "pagerd: " + e->text);
        if (msg->request_id == id) {
            if (fds_out) *fds_out = std::move(got->fds);
            return std::move(msg).value();
        }
        // A stale reply to an earlier request that timed out: skip it.
    }
}

Result<Mapping> Connection::Impl::lookup(const Region& region)
{
    std::lock_guard lock(regions_mutex);
    auto it = regions.find(region.id);
    if (it == regions.end() || it->second.region.addr != region.addr)
        return Error::system(EINVAL, "region " + std::to_string(region.id) + " is not mapped on this connection");
    return it->second;
}

std::vector<Mapping> Connection::Impl::shared_mappings()
{
    std::vector<Mapping> shared;
    std::lock_guard lock(regions_mutex);
    for (const auto& [id, m] : regions)
        if (m.region.access == Access::Shared) shared.push_back(m);
    return shared;
}

Connection::Connection(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

Result<std::unique_ptr<Connection>> Connection::connect(const ConnectOptions& options)
{
    auto impl = std::make_unique<Impl>();
    impl->timeout_ms = options.timeout_ms > 0 ? options.timeout_ms : 10000;
    impl->page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::string path = resolve_socket_path(options.socket_path);
    auto sock = dial(path);
    if (!sock) return sock.error();
    impl->sock = std::move(sock.value());

    // Greeting: the daemon refuses us if it lacks a capability we require, and we check too.
    const std::uint64_t required = k_required_caps | options.required_caps;
    proto::Hello hello{required, ~std::uint64_t{0},
                       options.name.empty() ? std::string(program_invocation_short_name) : options.name};
    if (hello.name.size() > proto::k_max_name) hello.name.resize(proto::k_max_name);
    auto welcome = impl->request(hello);
    if (!welcome) return welcome.error();
    const auto* w = std::get_if<proto::Welcome>(&welcome->body);
    if (!w) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered HELLO with something other than WELCOME");
    if (const auto missing = required & ~w->caps)
        return Error::daemon(proto::ErrorCode::CAPABILITY,
                             "pagerd (" + w->version + ") lacks required capabilities: " + missing_caps(missing));
    impl->daemon_caps = w->caps;

    auto uffd = create_uffd(false, (impl->daemon_caps & proto::cap::FORK) != 0);
    if (!uffd) return uffd.error();
    impl->uffd = std::move(uffd->fd);
    impl->uffd_features = uffd->features;
    impl->uffd_available = uffd->available;
    impl->writeback_interval_ms = options.writeback_interval_ms;
    impl->user_mode_only = uffd->user_mode_only;
    const int fd = impl->uffd.get();
    auto reg = impl->request(proto::RegisterUffd{impl->uffd_features,
                                                 impl->user_mode_only ? proto::k_uffd_user_mode_only : 0u},
                             std::span<const int>(&fd, 1));
    if (!reg) return reg.error();
    impl->start_monitor();
    impl->enlist();
    return std::unique_ptr<Connection>(new Connection(std::move(impl)));
}

Connection::~Connection()
{
    // Unmap (and so flush) while the monitor still runs: each munmap waits until someone
    // reads its UFFD_EVENT_UNMAP, the daemon or, once the daemon is gone, the monitor.
    std::vector<Region> left;
    {
        std::lock_guard lock(m_impl->regions_mutex);
        for (const auto& [id, m] : m_impl->regions) left.push_back(m.region);
    }
    for (const Region& r : left) (void)unmap(r);
    m_impl->delist();
    if (!m_impl->forked.load()) m_impl->stop_monitor();
}

Result<Region> Connection::map_fd(int fd, const MapOptions& o)
{
    const std::uint64_t page = m_impl->page_size;
    if (o.length == 0) return Error::system(EINVAL, "region length is zero");
    if (o.length % page || o.offset % page || reinterpret_cast<std::uintptr_t>(o.addr) % page)
        return Error::system(EINVAL, "address, offset and length must be multiples of the page size (" + std::to_string(page) + ")");
    if (o.access != Access::ReadOnly && o.access != Access::PrivateWritable && o.access != Access::Shared)
        return Error::system(EINVAL, "unknown access mode");
    if (o.tracking != Tracking::Auto && o.access != Access::Shared)
        return Error::system(EINVAL, "tracking applies to Shared regions only");
    if (auto p = check_prefetch(o.prefetch, m_impl->daemon_caps); !p) return p.error();
    struct stat st{};
    if (::fstat(fd, &st) != 0) return sys_error("the descriptor to map");
    if (!S_ISREG(st.st_mode)) return Error::system(EINVAL, "only regular files can be mapped");
    if (m_impl->forked.load()) return m_impl->request(proto::Ping{}).error();  // ENOTCONN, and why
    std::lock_guard layout(m_impl->layout_mutex);
    if (o.access == Access::Shared) return m_impl->map_shared(fd, o);
    if (m_impl->cache_usable()) {
        // No room in the daemon's page cache for this file (its address space is taken, or
        // the file is too large for it): the region is mapped the old way, private memory
        // the daemon copies into.
        auto cached = m_impl->map_cached(fd, o);
        if (cached || !cached.error().is_daemon(proto::ErrorCode::LIMIT)) return cached;
    }
    const int prot = PROT_READ | (o.access == Access::PrivateWritable ? PROT_WRITE : 0);
    void* addr = ::mmap(o.addr, o.length, prot,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (o.addr ? MAP_FIXED : 0), -1, 0);
    if (addr == MAP_FAILED) return sys_error("mmap of " + std::to_string(o.length) + " bytes");
    m_impl->keep_from_child(addr, o.length);
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(addr);
    reg.range.len = o.length;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(m_impl->uffd.get(), UFFDIO_REGISTER, &reg) != 0) {
        const int err = errno;
        ::munmap(addr, o.length);
        return sys_error("UFFDIO_REGISTER", err);
    }
    proto::Map m{reg.range.start, o.length, o.offset,
                 o.access == Access::PrivateWritable ? proto::k_map_private_writable : 0u, to_wire(o.prefetch)};
    auto reply = m_impl->request(m, std::span<const int>(&fd, 1));
    const auto* mapped = reply ? std::get_if<proto::Mapped>(&reply->body) : nullptr;
    if (!mapped) {
        ::munmap(addr, o.length);
        return reply ? Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered MAP with something other than MAPPED") : reply.error();
    }
    Region r{mapped->region_id, addr, o.length, o.access, Tracking::Auto};
    std::lock_guard lock(m_impl->regions_mutex);
    m_impl->regions.emplace(r.id, Mapping{r});
    return r;
}

Result<Region> Connection::map_store(const std::string& uri, const MapOptions& o)
{
    const std::uint64_t page = m_impl->page_size;
    if (uri.empty() || uri.size() > proto::k_max_uri)
        return Error::system(EINVAL, "a store URI has 1 to " + std::to_string(proto::k_max_uri) + " bytes");
    if (o.length % page || o.offset % page || reinterpret_cast<std::uintptr_t>(o.addr) % page)
        return Error::system(EINVAL, "address, offset and length must be multiples of the page size (" + std::to_string(page) + ")");
    if (o.access != Access::ReadOnly && o.access != Access::PrivateWritable && o.access != Access::Shared)
        return Error::system(EINVAL, "unknown access mode");
    if (o.tracking != Tracking::Auto && o.tracking != Tracking::UffdWp)
        return Error::system(EINVAL, "a store's Shared region is tracked with uffd-wp only");
    if (auto p = check_prefetch(o.prefetch, m_impl->daemon_caps); !p) return p.error();
    if (!(m_impl->daemon_caps & proto::cap::STORES))
        return Error::daemon(proto::ErrorCode::CAPABILITY, "this pagerd maps files only (no STORES capability)");
    if (!m_impl->cache_usable() || (o.access == Access::Shared && !(m_impl->daemon_caps & proto::cap::CACHE_SHARED)))
        return Error::daemon(proto::ErrorCode::CAPABILITY, "a store region needs the daemon's page cache"
                                                           " (and UFFD_FEATURE_MINOR_SHMEM; PAGERD_CACHE=0 turns it off)");
    if (o.length == 0) return Error::system(EINVAL, "region length is zero");
    if (m_impl->forked.load()) return m_impl->request(proto::Ping{}).error();  // ENOTCONN, and why
    std::lock_guard layout(m_impl->layout_mutex);
    return m_impl->map_cached(-1, o, &uri);
}

Result<std::vector<StoreInfo>> Connection::stores()
{
    std::vector<StoreInfo> out;
    for (std::uint32_t i = 0;; ++i) {
        auto reply = m_impl->request(proto::StoresRequest{i});
        if (!reply) return reply.error();
        const auto* e = std::get_if<proto::StoresReply>(&reply->body);
        if (!e) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered STORES with something else");
        if (i >= e->total || i >= 100000) return out;
        out.push_back({e->kind, e->uri, e->size, e->connections, e->inflight, e->reads, e->read_bytes,
                       e->read_errors, e->retries, e->timeouts, e->reconnects, e->writes, e->write_bytes,
                       e->write_errors, e->read_latency_avg_ns, e->read_latency_max_ns});
    }
}

Result<Region> Connection::map_file(const std::string& path, const MapOptions& o)
{
    const int mode = o.access == Access::Shared ? O_RDWR : O_RDONLY;
    util::UniqueFd fd(::open(path.c_str(), mode | O_CLOEXEC));
    if (!fd) return sys_error("cannot open " + path);
    return map_fd(fd.get(), o);  // the daemon keeps its own copy of the descriptor
}

Result<void> Connection::unmap(const Region& region)
{
    if (m_impl->forked.load()) {
        // A forked child: its own flush, then munmap; the daemon reads the unmap from the
        // child's userfaultfd.
        auto found = m_impl->lookup(region);
        if (!found) return found.error();
        if (auto f = m_impl->child_flush(found.value()); !f) return f.error();
        (void)forget(region);
        if (::munmap(region.addr, region.size) != 0) return sys_error("munmap");
        return {};
    }
    std::lock_guard flush_lock(m_impl->flush_mutex);
    std::lock_guard layout(m_impl->layout_mutex);
    auto found = m_impl->lookup(region);
    if (!found) return found.error();
    Mapping m = found.value();
    const bool alive = m_impl->alive.load();
    if (m.region.access == Access::Shared && alive) {
        // Read-only first, so that no write can land after the last flush (a thread that
        // still writes gets SIGSEGV, as after munmap); then flush, then let the daemon
        // forget the region, then unmap: nothing written is lost.
        if (m.segv_slot >= 0) {
            segv::remove(m.segv_slot);
            m.segv_slot = -1;
            std::lock_guard lock(m_impl->regions_mutex);
            m_impl->regions[m.region.id].segv_slot = -1;
        }
        ::mprotect(m.region.addr, m.region.size, PROT_READ);
        if (auto f = m_impl->flush_mapping(m); !f) return f.error();
        if (auto reply = m_impl->request(proto::Unmap{m.region.id}); !reply) return reply.error();
    }
    {
        std::lock_guard lock(m_impl->regions_mutex);
        m_impl->regions.erase(m.region.id);
    }
    m_impl->release_mapping(m);
    // Other regions: munmap first; threads still faulting in the region are woken by the
    // daemon when it reads the unmap event, and then fault like on any unmapped memory.
    if (::munmap(m.region.addr, m.region.size) != 0) return sys_error("munmap");
    if (m.region.access == Access::Shared || !alive) return {};
    auto reply = m_impl->request(proto::Unmap{m.region.id});
    if (!reply) return reply.error();
    return {};
}

Result<void> Connection::forget(const Region& region)
{
    auto found = m_impl->lookup(region);
    if (!found) return found.error();
    Mapping m = found.value();
    {
        std::lock_guard lock(m_impl->regions_mutex);
        m_impl->regions.erase(m.region.id);
    }
    m_impl->release_mapping(m);
    if (m_impl->forked.load() || !m_impl->alive.load()) return {};
    auto reply = m_impl->request(proto::Unmap{m.region.id});
    // NO_SUCH_REGION: the daemon had dropped it already (munmap of all of it).
    if (!reply && !reply.error().is_daemon(proto::ErrorCode::NO_SUCH_REGION)) return reply.error();
    return {};
}

bool Connection::forked() const { return m_impl->forked.load(); }
bool Connection::fork_inherits() const { return (m_impl->uffd_features & UFFD_FEATURE_EVENT_FORK) != 0; }

Result<FlushResult> Connection::flush(const Region& region)
{
    auto m = m_impl->lookup(region);
    if (!m) return m.error();
    if (m_impl->forked.load()) return m_impl->child_flush(m.value());
    std::lock_guard flush_lock(m_impl->flush_mutex);
    return m_impl->flush_mapping(m.value());
}

Result<FlushResult> Connection::flush_all()
{
    const bool child = m_impl->forked.load();
    std::unique_lock<std::mutex> flush_lock;
    if (!child) flush_lock = std::unique_lock(m_impl->flush_mutex);
    FlushResult total;
    for (const Mapping& m : m_impl->shared_mappings()) {
        auto f = child ? m_impl->child_flush(m) : m_impl->flush_mapping(m);
        if (!f) return f.error();
        total.pages += f->pages;
        total.bytes += f->bytes;
    }
    return total;
}

Result<Region> Connection::find(const void* addr) const
{
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    std::lock_guard lock(m_impl->regions_mutex);
    for (const auto& [id, m] : m_impl->regions) {
        const auto start = reinterpret_cast<std::uintptr_t>(m.region.addr);
        if (a >= start && a < start + m.region.size) return m.region;
    }
    return Error::system(EINVAL, "no region of this connection contains that address");
}

Result<std::vector<CacheInfo>> Connection::caches()
{
    std::vector<CacheInfo> out;
    for (std::uint32_t i = 0;; ++i) {
        auto reply = m_impl->request(proto::CachesRequest{i});
        if (!reply) return reply.error();
        const auto* e = std::get_if<proto::CachesReply>(&reply->body);
        if (!e) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered CACHES with something else");
        if (i >= e->total || i >= 100000) return out;
        out.push_back({e->dev, e->ino, e->size, e->resident, e->clients, e->regions, e->dirty});
    }
}

Result<std::vector<RegionInfo>> Connection::regions()
{
    std::vector<RegionInfo> out;
    for (;;) {
        auto reply = m_impl->request(proto::RegionsRequest{static_cast<std::uint32_t>(out.size())});
        if (!reply) return reply.error();
        const auto* list = std::get_if<proto::RegionsReply>(&reply->body);
        if (!list) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered REGIONS with something else");
        for (const auto& e : list->entries) {
            RegionInfo info;
            info.client = e.client;
            info.pid = e.pid;
            info.id = e.region_id;
            info.length = e.length;
            info.access = e.access == proto::Access::SHARED ? Access::Shared
                          : e.access == proto::Access::PRIVATE_WRITABLE ? Access::PrivateWritable
                                                                       : Access::ReadOnly;
            info.tracking = e.tracking == proto::Tracking::UFFD_WP ? Tracking::UffdWp
                            : e.tracking == proto::Tracking::SEGV  ? Tracking::Sigsegv
                            : e.tracking == proto::Tracking::ASYNC ? Tracking::Async
                                                                   : Tracking::Auto;
            info.dirty_pages = e.dirty_pages;
            info.prefetch = from_wire(e.prefetch);
            info.faults = e.faults;
            info.latency_p50_ns = e.latency_p50_ns;
            info.latency_p99_ns = e.latency_p99_ns;
            info.prefetch_pending = e.prefetch_pending;
            for (std::size_t i = 0; i < k_latency_buckets; ++i) info.latency_histogram[i] = e.latency_histogram[i];
            out.push_back(info);
        }
        if (list->entries.empty() || out.size() >= list->total) return out;
    }
}

Result<Status> Connection::status()
{
    auto reply = m_impl->request(proto::StatusRequest{});
    if (!reply) return reply.error();
    const auto* s = std::get_if<proto::StatusReply>(&reply->body);
    if (!s) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered STATUS with something else");
    Status out;
    out.version = s->version;
    out.uptime_ms = s->uptime_ms;
    out.workers = s->workers;
    out.clients = s->clients;
    out.regions = s->regions;
    out.mapped_bytes = s->mapped_bytes;
    out.faults = s->faults;
    out.pages_installed = s->pages_installed;
    out.bytes_read = s->bytes_read;
    out.sigbus_faults = s->sigbus_faults;
    out.latency_p50_ns = s->latency_p50_ns;
    out.latency_p99_ns = s->latency_p99_ns;
    out.latency_max_ns = s->latency_max_ns;
    out.user_mode_only_clients = s->user_mode_only_clients;
    out.this_client_user_mode_only = s->requester_flags & proto::k_uffd_user_mode_only;
    out.this_client_regions = s->requester_regions;
    out.pages_prefetched = s->pages_prefetched;
    out.cache_budget = s->cache_budget;
    out.cache_bytes = s->cache_bytes;
    out.cache_files = s->cache_files;
    out.cache_loads = s->cache_loads;
    out.cache_hits = s->cache_hits;
    out.cache_evictions = s->cache_evictions;
    out.cache_refaults = s->cache_refaults;
    out.cache_dirty_bytes = s->cache_dirty_bytes;
    out.cache_writebacks = s->cache_writebacks;
    for (std::size_t i = 0; i < k_latency_buckets; ++i) out.latency_histogram[i] = s->latency_histogram[i];
    return out;
}

Result<void> Connection::ping()
{
    const std::uint64_t nonce = 0x70616765726421ull ^ reinterpret_cast<std::uintptr_t>(this);
    auto reply = m_impl->request(proto::Ping{nonce});
    if (!reply) return reply.error();
    const auto* p = std::get_if<proto::Pong>(&reply->body);
    if (!p || p->nonce != nonce) return Error::protocol(proto::ErrorCode::MALFORMED, "pagerd answered PING wrongly");
    return {};
}

bool Connection::user_mode_only() const { return m_impl->user_mode_only; }
std::uint64_t Connection::daemon_caps() const { return m_impl->daemon_caps; }
bool Connection::daemon_alive() const { return m_impl->alive.load(); }

}  // namespace pagerd::libclient
