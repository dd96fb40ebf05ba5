#include "pagerd/proto/codec.hpp"

#include <string>
#include <type_traits>

namespace pagerd::proto {
namespace {

class Writer {
public:
    void u16(std::uint16_t v) { put(v, 2); }
    void u32(std::uint32_t v) { put(v, 4); }
    void u64(std::uint64_t v) { put(v, 8); }
    void str(const std::string& s, std::size_t limit)
    {
        const std::size_t n = s.size() < limit ? s.size() : limit;
        u16(static_cast<std::uint16_t>(n));
        m_out.insert(m_out.end(), s.begin(), s.begin() + static_cast<long>(n));
    }
    std::vector<std::uint8_t>& out() { return m_out; }

private:
    void put(std::uint64_t v, int n)
    {
        for (int i = 0; i < n; ++i) m_out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    std::vector<std::uint8_t> m_out;
};

// Bounds-checked reader: any read past the end sets failed() and yields zeros.
class Reader {
public:
    explicit Reader(std::span<const std::uint8_t> in) : m_in(in) {}
    std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
    std::uint64_t u64() { return get(8); }
    std::string str(std::size_t limit)
    {
        const std::size_t n = u16();
        if (n > limit) m_error = "string of " + std::to_string(n) + " bytes exceeds limit " +
                                 std::to_string(limit);
        if (!m_error.empty() || n > m_in.size() - m_pos) {
            fail();
            return {};
        }
        std::string s(reinterpret_cast<const char*>(m_in.data() + m_pos), n);
        m_pos += n;
        return s;
    }
    void reject(std::string why)
    {
        m_error = std::move(why);
        fail();
    }
    bool failed() const { return m_failed; }
    bool at_end() const { return m_pos == m_in.size(); }
    const std::string& detail() const { return m_error; }

private:
    std::uint64_t get(int n)
    {
        if (m_failed || m_in.size() - m_pos < static_cast<std::size_t>(n)) {
            fail();
            return 0;
        }
        std::uint64_t v = 0;
        for (int i = 0; i < n; ++i) v |= std::uint64_t{m_in[m_pos + i]} << (8 * i);
        m_pos += static_cast<std::size_t>(n);
        return v;
    }
    void fail() { m_failed = true; }
    std::span<const std::uint8_t> m_in;
    std::size_t m_pos = 0;
    bool m_failed = false;
    std::string m_error;
};

// A u32 on the wire, one byte in Prefetch: like Tracking, a value above 255 must not alias
// a valid one; 0xff is no policy, so the session rejects it.
Prefetch prefetch_of(std::uint32_t v) { return static_cast<Prefetch>(v <= 0xff ? v : 0xff); }

void put(Writer& w, const Hello& m)
{
    w.u64(m.required_caps);
    w.u64(m.optional_caps);
    w.str(m.name, k_max_name);
}
void put(Writer& w, const Welcome& m)
{
    w.u64(m.caps);
    w.u32(m.page_size);
    w.u32(m.max_regions);
    w.u64(m.max_mapped_bytes);
    w.str(m.version, k_max_text);
}
void put(Writer& w, const RegisterUffd& m)
{
    w.u64(m.features);
    w.u32(m.flags);
}
void put(Writer& w, const Map& m)
{
    w.u64(m.addr);
    w.u64(m.length);
    w.u64(m.file_offset);
    w.u32(m.flags);
    w.u32(static_cast<std::uint32_t>(m.prefetch));
}
void put(Writer& w, const Mapped& m) { w.u64(m.region_id); }
void put(Writer& w, const CacheMapped& m) { w.u64(m.region_id); }
void put(Writer& w, const Unmap& m) { w.u64(m.region_id); }
void put(Writer&, const Ok&) {}
void put(Writer&, const StatusRequest&) {}
void put(Writer& w, const StatusReply& m)
{
    w.u64(m.uptime_ms);
    w.u32(m.workers);
    w.u32(m.clients);
    w.u64(m.regions);
    w.u64(m.mapped_bytes);
    w.u64(m.faults);
    w.u64(m.pages_installed);
    w.u64(m.bytes_read);
    w.u64(m.sigbus_faults);
    w.u64(m.latency_p50_ns);
    w.u64(m.latency_p99_ns);
    w.u64(m.latency_max_ns);
    w.u32(m.user_mode_only_clients);
    w.u32(m.requester_flags);
    w.u64(m.requester_regions);
    w.u64(m.pages_prefetched);
    w.u64(m.cache_budget);
    w.u64(m.cache_bytes);
    w.u64(m.cache_files);
    w.u64(m.cache_loads);
    w.u64(m.cache_hits);
    w.u64(m.cache_evictions);
    w.u64(m.cache_refaults);
    w.u64(m.cache_dirty_bytes);
    w.u64(m.cache_writebacks);
    for (const auto n : m.latency_histogram) w.u64(n);
    w.str(m.version, k_max_text);
}
void put(Writer& w, const Ping& m) { w.u64(m.nonce); }
void put(Writer& w, const Pong& m) { w.u64(m.nonce); }
void put(Writer& w, const ErrorReply& m)
{
    w.u32(static_cast<std::uint32_t>(m.code));
    w.str(m.text, k_max_text);
}

void get(Reader& r, Hello& m)
{
    m.required_caps = r.u64();
    m.optional_caps = r.u64();
    m.name = r.str(k_max_name);
}
void get(Reader& r, Welcome& m)
{
    m.caps = r.u64();
    m.page_size = r.u32();
    m.max_regions = r.u32();
    m.max_mapped_bytes = r.u64();
    m.version = r.str(k_max_text);
}
void get(Reader& r, RegisterUffd& m)
{
    m.features = r.u64();
    m.flags = r.u32();
}
void get(Reader& r, Map& m)
{
    m.addr = r.u64();
    m.length = r.u64();
    m.file_offset = r.u64();
    m.flags = r.u32();
    m.prefetch = prefetch_of(r.u32());
}
void get(Reader& r, Mapped& m) { m.region_id = r.u64(); }
void get(Reader& r, CacheMapped& m) { m.region_id = r.u64(); }
void get(Reader& r, Unmap& m) { m.region_id = r.u64(); }
void get(Reader&, Ok&) {}
void get(Reader&, StatusRequest&) {}
void get(Reader& r, StatusReply& m)
{
    m.uptime_ms = r.u64();
    m.workers = r.u32();
    m.clients = r.u32();
    m.regions = r.u64();
    m.mapped_bytes = r.u64();
    m.faults = r.u64();
    m.pages_installed = r.u64();
    m.bytes_read = r.u64();
    m.sigbus_faults = r.u64();
    m.latency_p50_ns = r.u64();
    m.latency_p99_ns = r.u64();
    m.latency_max_ns = r.u64();
    m.user_mode_only_clients = r.u32();
    m.requester_flags = r.u32();
    m.requester_regions = r.u64();
    m.pages_prefetched = r.u64();
    m.cache_budget = r.u64();
    m.cache_bytes = r.u64();
    m.cache_files = r.u64();
    m.cache_loads = r.u64();
    m.cache_hits = r.u64();
    m.cache_evictions = r.u64();
    m.cache_refaults = r.u64();
    m.cache_dirty_bytes = r.u64();
    m.cache_writebacks = r.u64();
    for (auto& n : m.latency_histogram) n = r.u64();
    m.version = r.str(k_max_text);
}
void get(Reader& r, Ping& m) { m.nonce = r.u64(); }
void get(Reader& r, Pong& m) { m.nonce = r.u64(); }
void get(Reader& r, ErrorReply& m)
{
    m.code = static_cast<ErrorCode>(r.u32());
    m.text = r.str(k_max_text);
}

void put(Writer& w, const MapShared& m)
{
    w.u64(m.addr);
    w.u64(m.length);
    w.u64(m.file_offset);
    w.u32(static_cast<std::uint32_t>(m.tracking));
    w.u32(static_cast<std::uint32_t>(m.prefetch));
}
void put(Writer& w, const Flush& m) { w.u64(m.region_id); }
void put(Writer& w, const Flushed& m)
{
    w.u64(m.pages);
    w.u64(m.bytes);
}
void put(Writer& w, const RegionsRequest& m) { w.u32(m.first); }
void put(Writer& w, const RegionsReply& m)
{
    w.u32(m.total);
    w.u32(m.first);
    const std::size_t n = m.entries.size() < k_max_region_entries ? m.entries.size() : k_max_region_entries;
    w.u16(static_cast<std::uint16_t>(n));
    for (std::size_t i = 0; i < n; ++i) {
        const auto& e = m.entries[i];
        w.u64(e.client);
        w.u32(e.pid);
        w.u16(static_cast<std::uint16_t>(static_cast<unsigned>(e.access) | static_cast<unsigned>(e.tracking) << 8));
        w.u16(static_cast<std::uint16_t>(e.prefetch));
        w.u64(e.region_id);
        w.u64(e.length);
        w.u64(e.dirty_pages);
        w.u64(e.faults);
        w.u64(e.latency_p50_ns);
        w.u64(e.latency_p99_ns);
        w.u64(e.prefetch_pending);
        for (const auto b : e.latency_histogram) w.u32(b);
    }
}

void get(Reader& r, MapShared& m)
{
    m.addr = r.u64();
    m.length = r.u64();
    m.file_offset = r.u64();
    // A u32 on the wire, one byte in Tracking: a value above 255 must not alias a valid
    // one (0x101 would become UFFD_WP); 0xff is no Tracking, so the session rejects it.
    const std::uint32_t tracking = r.u32();
    m.tracking = static_cast<Tracking>(tracking <= 0xff ? tracking : 0xff);
    m.prefetch = prefetch_of(r.u32());
}
void get(Reader& r, Flush& m) { m.region_id = r.u64(); }
void put(Writer& w, const CachesRequest& m) { w.u32(m.index); }
void get(Reader& r, CachesRequest& m) { m.index = r.u32(); }
void put(Writer& w, const CachesReply& m)
{
    w.u32(m.total);
    w.u32(m.index);
    w.u64(m.dev);
    w.u64(m.ino);
    w.u64(m.size);
    w.u64(m.resident);
    w.u32(m.clients);
    w.u32(m.regions);
    w.u64(m.dirty);
}
void get(Reader& r, CachesReply& m)
{
    m.total = r.u32();
    m.index = r.u32();
    m.dev = r.u64();
    m.ino = r.u64();
    m.size = r.u64();
    m.resident = r.u64();
    m.clients = r.u32();
    m.regions = r.u32();
    m.dirty = r.u64();
}
void put(Writer& w, const MapStore& m)
{
    w.u64(m.addr);
    w.u64(m.length);
    w.u64(m.offset);
    w.u32(m.flags);
    w.u32(static_cast<std::uint32_t>(m.prefetch));
    w.str(m.uri, k_max_uri);
}
void get(Reader& r, MapStore& m)
{
    m.addr = r.u64();
    m.length = r.u64();
    m.offset = r.u64();
    m.flags = r.u32();
    m.prefetch = prefetch_of(r.u32());
    m.uri = r.str(k_max_uri);
}
void put(Writer& w, const StoresRequest& m) { w.u32(m.index); }
void get(Reader& r, StoresRequest& m) { m.index = r.u32(); }
void put(Writer& w, const StoresReply& m)
{
    w.u32(m.total);
    w.u32(m.index);
    w.str(m.kind, k_max_name);
    w.str(m.uri, k_max_uri);
    w.u64(m.size);
    w.u32(m.connections);
    w.u32(m.inflight);
    for (std::uint64_t v : {m.reads, m.read_bytes, m.read_errors, m.retries, m.timeouts, m.reconnects, m.writes,
                            m.write_bytes, m.write_errors, m.read_latency_avg_ns, m.read_latency_max_ns})
        w.u64(v);
}
void get(Reader& r, StoresReply& m)
{
    m.total = r.u32();
    m.index = r.u32();
    m.kind = r.str(k_max_name);
    m.uri = r.str(k_max_uri);
    m.size = r.u64();
    m.connections = r.u32();
    m.inflight = r.u32();
    for (std::uint64_t* v : {&m.reads, &m.read_bytes, &m.read_errors, &m.retries, &m.timeouts, &m.reconnects,
                             &m.writes, &m.write_bytes, &m.write_errors, &m.read_latency_avg_ns,
                             &m.read_latency_max_ns})
        *v = r.u64();
}
void put(Writer& w, const PrefetchRequest& m)
{
    w.u64(m.addr);
    w.u64(m.length);
    w.u32(m.flags);
    w.u32(0);
}
void get(Reader& r, PrefetchRequest& m)
{
    m.addr = r.u64();
    m.length = r.u64();
    m.flags = r.u32();
    (void)r.u32();  // reserved
}
void get(Reader& r, Flushed& m)
{
    m.pages = r.u64();
    m.bytes = r.u64();
}
void get(Reader& r, RegionsRequest& m) { m.first = r.u32(); }
void get(Reader& r, RegionsReply& m)
{
    m.total = r.u32();
    m.first = r.u32();
    const std::size_t n = r.u16();
    if (n > k_max_region_entries) {
        r.reject("REGIONS_REPLY carries " + std::to_string(n) + " entries, more than " +
                 std::to_string(k_max_region_entries));
        return;
    }
    for (std::size_t i = 0; i < n && !r.failed(); ++i) {
        RegionEntry e;
        e.client = r.u64();
        e.pid = r.u32();
        const auto kinds = r.u16();
        e.access = static_cast<Access>(kinds & 0xff);
        e.tracking = static_cast<Tracking>(kinds >> 8);
        e.prefetch = static_cast<Prefetch>(r.u16() & 0xff);
        e.region_id = r.u64();
        e.length = r.u64();
        e.dirty_pages = r.u64();
        e.faults = r.u64();
        e.latency_p50_ns = r.u64();
        e.latency_p99_ns = r.u64();
        e.prefetch_pending = r.u64();
        for (auto& b : e.latency_histogram) b = r.u32();
        m.entries.push_back(e);
    }
}

Error fail(ErrorCode code, std::string text)
{
    return Error::protocol(code, std::move(text));
}

// Body alternative for a known type (index matches the order in Body).
Body empty_body(Type t)
{
    switch (t) {
    case Type::HELLO: return Hello{};
    case Type::WELCOME: return Welcome{};
    case Type::REGISTER_UFFD: return RegisterUffd{};
    case Type::MAP: return Map{};
    case Type::MAPPED: return Mapped{};
    case Type::UNMAP: return Unmap{};
    case Type::OK: return Ok{};
    case Type::STATUS: return StatusRequest{};
    case Type::STATUS_REPLY: return StatusReply{};
    case Type::PING: return Ping{};
    case Type::PONG: return Pong{};
    case Type::ERROR: return ErrorReply{};
    case Type::SHARED_MAP: return MapShared{};
    case Type::FLUSH: return Flush{};
    case Type::FLUSHED: return Flushed{};
    case Type::REGIONS: return RegionsRequest{};
    case Type::REGIONS_REPLY: return RegionsReply{};
    case Type::PREFETCH: return PrefetchRequest{};
    case Type::CACHE_MAPPED: return CacheMapped{};
    case Type::CACHES: return CachesRequest{};
    case Type::CACHES_REPLY: return CachesReply{};
    case Type::MAP_STORE: return MapStore{};
    case Type::STORES: return StoresRequest{};
    case Type::STORES_REPLY: return StoresReply{};
    }
    return Ok{};
}

bool known_type(std::uint16_t t)
{
    switch (static_cast<Type>(t)) {
#define PAGERD_X(name, value, fds) case Type::name:
        PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
        return true;
    }
    return false;
}

}  // namespace

Type type_of(const Body& body)
{
    return std::visit(
        [](const auto& b) -> Type {
            using T = std::decay_t<decltype(b)>;
            if constexpr (std::is_same_v<T, Hello>) return Type::HELLO;
            else if constexpr (std::is_same_v<T, Welcome>) return Type::WELCOME;
            else if constexpr (std::is_same_v<T, RegisterUffd>) return Type::REGISTER_UFFD;
            else if constexpr (std::is_same_v<T, Map>) return Type::MAP;
            else if constexpr (std::is_same_v<T, Mapped>) return Type::MAPPED;
            else if constexpr (std::is_same_v<T, Unmap>) return Type::UNMAP;
            else if constexpr (std::is_same_v<T, Ok>) return Type::OK;
            else if constexpr (std::is_same_v<T, StatusRequest>) return Type::STATUS;
            else if constexpr (std::is_same_v<T, StatusReply>) return Type::STATUS_REPLY;
            else if constexpr (std::is_same_v<T, Ping>) return Type::PING;
            else if constexpr (std::is_same_v<T, Pong>) return Type::PONG;
            else if constexpr (std::is_same_v<T, MapShared>) return Type::SHARED_MAP;
            else if constexpr (std::is_same_v<T, Flush>) return Type::FLUSH;
            else if constexpr (std::is_same_v<T, Flushed>) return Type::FLUSHED;
            else if constexpr (std::is_same_v<T, RegionsRequest>) return Type::REGIONS;
            else if constexpr (std::is_same_v<T, RegionsReply>) return Type::REGIONS_REPLY;
            else if constexpr (std::is_same_v<T, PrefetchRequest>) return Type::PREFETCH;
            else if constexpr (std::is_same_v<T, CacheMapped>) return Type::CACHE_MAPPED;
            else if constexpr (std::is_same_v<T, CachesRequest>) return Type::CACHES;
            else if constexpr (std::is_same_v<T, CachesReply>) return Type::CACHES_REPLY;
            else if constexpr (std::is_same_v<T, MapStore>) return Type::MAP_STORE;
            else if constexpr (std::is_same_v<T, StoresRequest>) return Type::STORES;
            else if constexpr (std::is_same_v<T, StoresReply>) return Type::STORES_REPLY;
            else return Type::ERROR;
        },
        body);
}

std::vector<std::uint8_t> encode(const Message& msg)
{
    Writer w;
    w.u32(k_magic);
    w.u16(k_version);
    w.u16(static_cast<std::uint16_t>(type_of(msg.body)));
    w.u32(0);  // length, patched below
    w.u32(msg.request_id);
    std::visit([&](const auto& b) { put(w, b); }, msg.body);
    auto& out = w.out();
    const auto len = static_cast<std::uint32_t>(out.size());
    for (int i = 0; i < 4; ++i) out[8 + i] = static_cast<std::uint8_t>(len >> (8 * i));
    return std::move(out);
}

Result<Message> decode(std::span<const std::uint8_t> bytes, std::size_t fd_count)
{
    if (bytes.size() < k_header_size)
        return fail(ErrorCode::MALFORMED, "message of " + std::to_string(bytes.size()) +
                                              " bytes is shorter than the 16-byte header");
    if (bytes.size() > k_max_message_size)
        return fail(ErrorCode::MALFORMED, "message of " + std::to_string(bytes.size()) +
                                              " bytes exceeds the limit of " +
                                              std::to_string(k_max_message_size));
    Reader r(bytes);
    const auto magic = r.u32();
    const auto version = r.u16();
    const auto type = r.u16();
    const auto length = r.u32();
    Message msg;
    msg.request_id = r.u32();
    if (magic != k_magic) return fail(ErrorCode::MALFORMED, "bad magic (not a pagerd peer)");
    if (version != k_version)
        return fail(ErrorCode::MALFORMED, "protocol version " + std::to_string(version) +
                                              " is not supported (this side speaks " +
                                              std::to_string(k_version) + ")");
    if (length != bytes.size())
        return fail(ErrorCode::MALFORMED, "header says " + std::to_string(length) +
                                              " bytes but the datagram has " +
                                              std::to_string(bytes.size()));
    if (!known_type(type))
        return fail(ErrorCode::UNKNOWN_TYPE, "unknown message type " + std::to_string(type));
    const auto t = static_cast<Type>(type);
    msg.body = empty_body(t);
    std::visit([&](auto& b) { get(r, b); }, msg.body);
    if (r.failed())
        return fail(ErrorCode::MALFORMED,
                    std::string(type_name(t)) + " body is truncated or invalid" +
                        (r.detail().empty() ? "" : ": " + r.detail()));
    if (!r.at_end())
        return fail(ErrorCode::MALFORMED, std::string(type_name(t)) + " body has trailing bytes");
    if (fd_count != fds_expected(t))
        return fail(ErrorCode::BAD_DESCRIPTOR,
                    std::string(type_name(t)) + " must carry " +
                        std::to_string(fds_expected(t)) + " descriptor(s), got " +
                        std::to_string(fd_count));
    return msg;
}

bool is_framing_error(const Error& e)
{
    return e.code == static_cast<int>(ErrorCode::MALFORMED);
}

}  // namespace pagerd::proto
