// Message bodies. Encoding and decoding live in codec.hpp; layouts in proto/PROTOCOL.md.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "pagerd/proto/constants.hpp"

namespace pagerd::proto {

struct Hello {
    std::uint64_t required_caps = 0;
    std::uint64_t optional_caps = 0;
    std::string name;  // at most k_max_name bytes
};
struct Welcome {
    std::uint64_t caps = 0;
    std::uint32_t page_size = 0;
    std::uint32_t max_regions = 0;
    std::uint64_t max_mapped_bytes = 0;
    std::string version;
};
struct RegisterUffd {
    std::uint64_t features = 0;  // what UFFDIO_API granted the client
    std::uint32_t flags = 0;     // k_uffd_user_mode_only
};
struct Map {
    std::uint64_t addr = 0;
    std::uint64_t length = 0;
    std::uint64_t file_offset = 0;
    std::uint32_t flags = 0;  // k_map_*
    Prefetch prefetch = Prefetch::SEQUENTIAL;
};
struct Mapped {
    std::uint64_t region_id = 0;
};
struct CacheMapped {  // fds: the cache (read-only; read-write for k_map_shared); map it at MAP.addr from MAP.file_offset
    std::uint64_t region_id = 0;
};
struct Unmap {
    std::uint64_t region_id = 0;
};
struct Ok {};
struct StatusRequest {};
struct StatusReply {
    std::uint64_t uptime_ms = 0;
    std::uint32_t workers = 0;
    std::uint32_t clients = 0;
    std::uint64_t regions = 0;
    std::uint64_t mapped_bytes = 0;
    std::uint64_t faults = 0;           // fault messages served
    std::uint64_t pages_installed = 0;  // pages placed with UFFDIO_COPY
    std::uint64_t bytes_read = 0;       // bytes read from stores
    std::uint64_t sigbus_faults = 0;    // faults answered with SIGBUS (past EOF, I/O error)
    std::uint64_t latency_p50_ns = 0;
    std::uint64_t latency_p99_ns = 0;
    std::uint64_t latency_max_ns = 0;
    std::uint32_t user_mode_only_clients = 0;
    std::uint32_t requester_flags = 0;     // the asking client's REGISTER_UFFD.flags
    std::uint64_t requester_regions = 0;   // regions of the asking client
    std::uint64_t pages_prefetched = 0;    // pages installed ahead of any fault
    // The page cache (CACHE regions): bytes, pages since start.
    std::uint64_t cache_budget = 0;        // --memory-max
    std::uint64_t cache_bytes = 0;         // resident now
    std::uint64_t cache_files = 0;         // caches open now (one per file)
    std::uint64_t cache_loads = 0;         // pages loaded from the store into the cache
    std::uint64_t cache_hits = 0;          // pages mapped for a client from the cache, no load
    std::uint64_t cache_evictions = 0;     // pages dropped to stay within the budget
    std::uint64_t cache_refaults = 0;      // loads of pages evicted lately
    std::uint64_t cache_dirty_bytes = 0;   // written by clients into the cache, not yet to their files
    std::uint64_t cache_writebacks = 0;    // pages written back to their files so that the cache could evict them
    std::array<std::uint64_t, k_latency_buckets> latency_histogram{};  // see latency_bucket()
    std::string version;
};
struct Ping {
    std::uint64_t nonce = 0;
};
struct Pong {
    std::uint64_t nonce = 0;
};
struct MapShared {  // fds: the file (read-write), the region's memfd
    std::uint64_t addr = 0;
    std::uint64_t length = 0;
    std::uint64_t file_offset = 0;
    Tracking tracking = Tracking::UFFD_WP;
    Prefetch prefetch = Prefetch::SEQUENTIAL;
};
struct Flush {
    std::uint64_t region_id = 0;  // 0: every Shared region of the connection
};
struct Flushed {
    std::uint64_t pages = 0;
    std::uint64_t bytes = 0;
};
struct RegionsRequest {
    std::uint32_t first = 0;  // index of the first entry wanted
};
struct RegionEntry {
    std::uint64_t client = 0;
    std::uint32_t pid = 0;
    Access access = Access::READ_ONLY;
    Tracking tracking = Tracking::NONE;
    std::uint64_t region_id = 0;
    std::uint64_t length = 0;
    std::uint64_t dirty_pages = 0;
    Prefetch prefetch = Prefetch::SEQUENTIAL;
    std::uint64_t faults = 0;  // of the whole region (all its pieces)
    std::uint64_t latency_p50_ns = 0;
    std::uint64_t latency_p99_ns = 0;
    std::uint64_t prefetch_pending = 0;  // bytes the region's prefetches have yet to load
    std::array<std::uint32_t, k_latency_buckets> latency_histogram{};
};
struct RegionsReply {
    std::uint32_t total = 0;  // entries in the whole list
    std::uint32_t first = 0;
    std::vector<RegionEntry> entries;  // at most k_max_region_entries
};
struct CachesRequest {
    std::uint32_t index = 0;  // which cache of the list
};
struct CachesReply {  // one file's page cache; all 0 but total when index >= total
    std::uint32_t total = 0;  // caches in the list
    std::uint32_t index = 0;
    std::uint64_t dev = 0, ino = 0;  // the file (st_dev, st_ino)
    std::uint64_t size = 0;          // bytes the cache spans (the file's size, page-rounded)
    std::uint64_t resident = 0;      // bytes it holds
    std::uint32_t clients = 0;       // connections with a region of it
    std::uint32_t regions = 0;       // region pieces mapping it
    std::uint64_t dirty = 0;         // bytes of it written by clients and not yet to the file
};
struct PrefetchRequest {  // PREFETCH: load [addr, addr + length) of this connection's regions
    std::uint64_t addr = 0;
    std::uint64_t length = 0;
    std::uint32_t flags = 0;  // k_prefetch_*
};
// MAP_STORE: a region of a store the daemon reaches itself, named by URI (capability
// STORES): "nbd://host[:port]/export", "nbd+unix:///export?socket=PATH" (and the nbds
// forms), allowed by the daemon's --allow-store, or "zero:SIZE" (demand-zero memory).
// flags as MAP's (k_map_cache is required). Reply CACHE_MAPPED with the cache's descriptor.
struct MapStore {
    std::uint64_t addr = 0;
    std::uint64_t length = 0;
    std::uint64_t offset = 0;  // in the store
    std::uint32_t flags = 0;   // k_map_*
    Prefetch prefetch = Prefetch::SEQUENTIAL;
    std::string uri;  // at most k_max_uri bytes
};
struct StoresRequest {
    std::uint32_t index = 0;  // which store of the list
};
struct StoresReply {  // one store; all 0 and empty but total when index >= total
    std::uint32_t total = 0;
    std::uint32_t index = 0;
    std::string kind;  // "file", "nbd", "zero"
    std::string uri;   // the store's name (a file: "file:<dev>:<ino>")
    std::uint64_t size = 0;
    std::uint32_t connections = 0;  // open now
    std::uint32_t inflight = 0;     // requests in flight now
    std::uint64_t reads = 0, read_bytes = 0, read_errors = 0;
    std::uint64_t retries = 0, timeouts = 0, reconnects = 0;
    std::uint64_t writes = 0, write_bytes = 0, write_errors = 0;
    std::uint64_t read_latency_avg_ns = 0, read_latency_max_ns = 0;
};
struct ErrorReply {
    ErrorCode code = ErrorCode::INTERNAL;
    std::string text;  // at most k_max_text bytes
};

using Body = std::variant<Hello, Welcome, RegisterUffd, Map, Mapped, CacheMapped, Unmap, Ok, StatusRequest,
                          StatusReply, Ping, Pong, ErrorReply, MapShared, Flush, Flushed,
                          RegionsRequest, RegionsReply, PrefetchRequest, CachesRequest, CachesReply, MapStore,
                          StoresRequest, StoresReply>;

struct Message {
    std::uint32_t request_id = 0;
    Body body;
};

Type type_of(const Body& body);

}  // namespace pagerd::proto
