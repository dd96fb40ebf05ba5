// Control messages of one client: decode, dispatch, one catch point, reply.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"
#include "pagerd/util/uffd.hpp"
#include "worker.hpp"

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
                                        proto::cap::SIGBUS_PAST_EOF;
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

}  // namespace

void Worker::on_socket_readable(Client& c)
{
    for (unsigned i = 0; i < k_messages_per_wakeup && !c.closing; ++i) {
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
        bool disconnect = false;
        proto::Body reply;
        try {
            reply = handle_request(c, *msg, got->fds, disconnect);
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
        send_reply(c, msg->request_id, std::move(reply));
        if (disconnect) close_client(c, "session ended by the daemon");
    }
    // Budget used up with messages possibly left: the re-armed poll fires again at once.
}

void Worker::send_reply(Client& c, std::uint32_t request_id, proto::Body body)
{
    if (c.closing) return;
    const int err = proto::send_message(c.sock.get(), proto::Message{request_id, std::move(body)}, {},
                                        MSG_DONTWAIT);
    if (err == EAGAIN)
        close_client(c, "client does not read its replies");
    else if (err)
        close_client(c, std::string("send failed: ") + std::strerror(err));
}

proto::Body Worker::handle_request(Client& c, proto::Message& msg,
                                   std::vector<util::UniqueFd>& fds, bool& disconnect)
{
    using namespace proto;
    if (!c.hello_done && !std::holds_alternative<Hello>(msg.body)) {
        disconnect = true;
        reject(ErrorCode::NOT_READY, "the first message must be HELLO");
    }
    if (auto* m = std::get_if<Hello>(&msg.body)) return on_hello(c, *m, disconnect);
    if (auto* m = std::get_if<RegisterUffd>(&msg.body)) return on_register(c, *m, std::move(fds.at(0)));
    if (auto* m = std::get_if<Map>(&msg.body)) return on_map(c, *m, std::move(fds.at(0)));
    if (auto* m = std::get_if<Unmap>(&msg.body)) return on_unmap(c, *m);
    if (std::holds_alternative<StatusRequest>(msg.body)) return on_status(c);
    if (auto* m = std::get_if<Ping>(&msg.body)) return Pong{m->nonce};
    reject(ErrorCode::UNKNOWN_TYPE,
           std::string(type_name(type_of(msg.body))) + " is sent by the daemon, not to it");
}

proto::Body Worker::on_hello(Client& c, const proto::Hello& m, bool& disconnect)
{
    if (c.hello_done) reject(proto::ErrorCode::NOT_READY, "HELLO was already received");
    const std::uint64_t missing = m.required_caps & ~k_daemon_caps;
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
    spdlog::debug("client {}: HELLO from '{}'", c.serial, c.name);
    return proto::Welcome{k_daemon_caps, m_ctx.page_size, m_ctx.config.max_regions_per_client,
                          m_ctx.config.max_mapped_bytes_per_client, version_string()};
}

proto::Body Worker::on_register(Client& c, const proto::RegisterUffd& m, util::UniqueFd fd)
{
    using proto::ErrorCode;
    if (c.uffd) reject(ErrorCode::NOT_READY, "a userfaultfd is already registered on this connection");
    if (!is_userfaultfd(fd.get()))
        reject(ErrorCode::BAD_DESCRIPTOR, "the descriptor sent with REGISTER_UFFD is not a userfaultfd");
    const int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK) < 0)
        reject(ErrorCode::BAD_DESCRIPTOR, std::string("cannot use the userfaultfd: ") + std::strerror(errno));
    c.uffd = std::move(fd);
    c.uffd_features = m.features;
    c.uffd_flags = m.flags & proto::k_uffd_user_mode_only;
    if (c.uffd_flags & proto::k_uffd_user_mode_only)
        m_stats.user_mode_only_clients.fetch_add(1, std::memory_order_relaxed);
    arm_poll(c, c.uffd_op, c.uffd.get());
    spdlog::info("client {}: userfaultfd registered (features {}, {})", c.serial, hex(m.features),
                 c.uffd_flags ? "user-mode only" : "full mode");
    return proto::Ok{};
}

proto::Body Worker::on_map(Client& c, const proto::Map& m, util::UniqueFd fd)
{
    using proto::ErrorCode;
    const std::uint64_t page = m_ctx.page_size;
    if (!c.uffd) reject(ErrorCode::NOT_READY, "MAP before REGISTER_UFFD");
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        reject(ErrorCode::BAD_DESCRIPTOR, "the descriptor sent with MAP is not a regular file");
    const int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || (fl & O_PATH) || (fl & O_ACCMODE) == O_WRONLY)
        reject(ErrorCode::BAD_DESCRIPTOR, "the file descriptor sent with MAP is not open for reading");
    if (m.flags & ~proto::k_map_known_flags)
        reject(ErrorCode::BAD_RANGE, "unknown MAP flags " + hex(m.flags & ~proto::k_map_known_flags));
    if (m.length == 0) reject(ErrorCode::BAD_RANGE, "region length is zero");
    if (m.addr % page || m.length % page || m.file_offset % page)
        reject(ErrorCode::BAD_RANGE, "address, length and file offset must be multiples of the page size (" +
                                         std::to_string(page) + ")");
    if (m.addr + m.length < m.addr || m.file_offset + m.length < m.file_offset ||
        m.addr + m.length > (std::uint64_t{1} << 57))
        reject(ErrorCode::BAD_RANGE, "region wraps around the address or offset space");
    const std::uint64_t file_pages_end = (static_cast<std::uint64_t>(st.st_size) + page - 1) / page * page;
    if (m.file_offset + m.length > file_pages_end)
        reject(ErrorCode::PAST_EOF, "region [" + std::to_string(m.file_offset) + ", " +
                                        std::to_string(m.file_offset + m.length) +
                                        ") extends past the end of the file (" +
                                        std::to_string(st.st_size) + " bytes)");
    if (c.regions.overlaps(m.addr, m.length))
        reject(ErrorCode::OVERLAP, "region at " + hex(m.addr) + " overlaps a region already mapped");
    if (c.regions.count() >= m_ctx.config.max_regions_per_client)
        reject(ErrorCode::LIMIT, "at most " + std::to_string(m_ctx.config.max_regions_per_client) +
                                     " regions per client");
    if (c.regions.bytes() + m.length > m_ctx.config.max_mapped_bytes_per_client)
        reject(ErrorCode::LIMIT, "at most " + std::to_string(m_ctx.config.max_mapped_bytes_per_client) +
                                     " bytes mapped per client");
    Region r;
    r.id = c.next_region_id++;
    r.start = m.addr;
    r.length = m.length;
    r.file_offset = m.file_offset;
    r.writable = m.flags & proto::k_map_private_writable;
    r.file = std::make_shared<util::UniqueFd>(std::move(fd));
    spdlog::debug("client {}: region {} at {} length {} file offset {}{}", c.serial, r.id,
                  hex(r.start), r.length, r.file_offset, r.writable ? " private-writable" : "");
    c.regions.insert(std::move(r));
    m_stats.regions.fetch_add(1, std::memory_order_relaxed);
    m_stats.mapped_bytes.fetch_add(m.length, std::memory_order_relaxed);
    return proto::Mapped{c.next_region_id - 1};
}

proto::Body Worker::on_unmap(Client& c, const proto::Unmap& m)
{
    if (m.region_id == 0 || m.region_id >= c.next_region_id)
        reject(proto::ErrorCode::NO_SUCH_REGION, "region " + std::to_string(m.region_id) +
                                                     " was never mapped on this connection");
    const auto before = c.regions.count();
    const auto bytes = c.regions.remove_id(m.region_id);
    m_stats.regions.fetch_sub(before - c.regions.count(), std::memory_order_relaxed);
    m_stats.mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
    return proto::Ok{};
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
    s.version = version_string();
    return s;
}

}  // namespace pagerd::daemon
