// Wire constants shared by daemon and client. proto/PROTOCOL.md is the specification;
// tests/proto/test_protocol_doc.cpp checks that this file and the document agree.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pagerd::proto {

inline constexpr std::uint32_t k_magic = 0x44524750;  // "PGRD" in little-endian byte order
inline constexpr std::uint16_t k_version = 1;
inline constexpr std::size_t k_header_size = 16;
inline constexpr std::size_t k_max_message_size = 4096;  // header included
inline constexpr std::size_t k_max_fds = 2;              // per message
inline constexpr std::size_t k_max_name = 64;            // HELLO client name
inline constexpr std::size_t k_max_text = 1024;          // ERROR text, version strings
inline constexpr std::size_t k_max_uri = 1024;           // MAP_STORE.uri, STORES_REPLY.uri
inline constexpr const char* k_default_socket_path = "/run/pagerd/pagerd.sock";

// Message types: X(NAME, value, fds carried)
#define PAGERD_MESSAGE_TYPES(X) \
    X(HELLO, 1, 0)              \
    X(WELCOME, 2, 0)            \
    X(REGISTER_UFFD, 3, 1)      \
    X(MAP, 4, 1)                \
    X(MAPPED, 5, 0)             \
    X(UNMAP, 6, 0)              \
    X(OK, 7, 0)                 \
    X(STATUS, 8, 0)             \
    X(STATUS_REPLY, 9, 0)       \
    X(PING, 10, 0)              \
    X(PONG, 11, 0)              \
    X(ERROR, 12, 0)             \
    X(SHARED_MAP, 13, 2)        \
    X(FLUSH, 14, 0)             \
    X(FLUSHED, 15, 0)           \
    X(REGIONS, 16, 0)           \
    X(REGIONS_REPLY, 17, 0)     \
    X(PREFETCH, 18, 0)          \
    X(CACHE_MAPPED, 19, 1)      \
    X(CACHES, 20, 0)            \
    X(CACHES_REPLY, 21, 0)      \
    X(MAP_STORE, 22, 0)         \
    X(STORES, 23, 0)            \
    X(STORES_REPLY, 24, 0)

enum class Type : std::uint16_t {
#define PAGERD_X(name, value, fds) name = value,
    PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
};

// Error codes carried by ERROR: X(NAME, value)
#define PAGERD_ERROR_CODES(X) \
    X(MALFORMED, 1)           \
    X(UNKNOWN_TYPE, 2)        \
    X(BAD_DESCRIPTOR, 3)      \
    X(NOT_READY, 4)           \
    X(BAD_RANGE, 5)           \
    X(OVERLAP, 6)             \
    X(PAST_EOF, 7)            \
    X(LIMIT, 8)               \
    X(NO_SUCH_REGION, 9)      \
    X(CAPABILITY, 10)         \
    X(INTERNAL, 11)           \
    X(TIMEOUT, 12)            \
    X(IO_ERROR, 13)

enum class ErrorCode : std::uint32_t {
#define PAGERD_X(name, value) name = value,
    PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X
};

// Capability bits (WELCOME.caps, HELLO.required/optional). Only ever added.
#define PAGERD_CAPABILITIES(X)   \
    X(FILE_STORE, 0)             \
    X(PRIVATE_WRITABLE, 1)       \
    X(UFFD_EVENTS, 2)            \
    X(STATUS, 3)                 \
    X(SIGBUS_PAST_EOF, 4)        \
    X(SHARED_WRITABLE, 5)        \
    X(PREFETCH, 6)               \
    X(CACHE, 7)                  \
    X(CACHE_SHARED, 8)           \
    X(STORES, 9)                 \
    X(FORK, 10)

namespace cap {
#define PAGERD_X(name, bit) inline constexpr std::uint64_t name = std::uint64_t{1} << bit;
PAGERD_CAPABILITIES(PAGERD_X)
#undef PAGERD_X
}  // namespace cap

// REGISTER_UFFD.flags
inline constexpr std::uint32_t k_uffd_user_mode_only = 1u << 0;
inline constexpr std::uint32_t k_uffd_async_wp = 1u << 1;  // the connection's second uffd
inline constexpr std::uint32_t k_uffd_known_flags = k_uffd_user_mode_only | k_uffd_async_wp;
// SHARED_MAP.tracking, and RegionEntry.tracking (0 there: not a Shared region)
enum class Tracking : std::uint8_t { NONE = 0, UFFD_WP = 1, SEGV = 2, ASYNC = 3 };
// RegionEntry.access
enum class Access : std::uint8_t { READ_ONLY = 0, PRIVATE_WRITABLE = 1, SHARED = 2 };
inline constexpr std::size_t k_max_region_entries = 29;  // per REGIONS_REPLY
// MAP.prefetch and SHARED_MAP.prefetch: what the daemon loads beyond the faulting pages.
// SEQUENTIAL (0, the default) grows a read-ahead window for sequential streams; NONE loads
// the faulting block only; ALL fills the whole region in the background, faults first.
enum class Prefetch : std::uint8_t { SEQUENTIAL = 0, NONE = 1, ALL = 2 };
// PREFETCH.flags
inline constexpr std::uint32_t k_prefetch_wait = 1u << 0;  // reply once the range is loaded
inline constexpr std::uint32_t k_prefetch_known_flags = k_prefetch_wait;
// Fault-latency histograms (STATUS_REPLY, REGIONS_REPLY entries): bucket 0 counts faults
// served in under 2 µs, bucket i (1..14) those in [2^i, 2^(i+1)) µs, bucket 15 the rest.
inline constexpr std::size_t k_latency_buckets = 16;
constexpr unsigned latency_bucket(std::uint64_t ns)
{
    std::uint64_t us = ns / 1000;
    unsigned b = 0;
    while (us >= 2 && b < k_latency_buckets - 1) {
        us >>= 1;
        ++b;
    }
    return b;
}
// MAP.flags
inline constexpr std::uint32_t k_map_private_writable = 1u << 0;
// The region maps the daemon's cache of the file: answered by CACHE_MAPPED with the
// cache's descriptor, which the client maps at `addr` and registers MISSING | MINOR.
inline constexpr std::uint32_t k_map_cache = 1u << 1;
// With k_map_cache only, never with k_map_private_writable (capability CACHE_SHARED): a
// Shared region in the daemon's cache of the file. The descriptor sent with MAP is open
// O_RDWR (not O_APPEND, not O_DIRECT). CACHE_MAPPED then carries a read-write descriptor
// of the cache, which the client maps MAP_SHARED read-write at `addr` from `file_offset`
// and registers MISSING | MINOR | WP (its uffd needs UFFD_FEATURE_MINOR_SHMEM,
// UFFD_FEATURE_WP_HUGETLBFS_SHMEM and UFFD_FEATURE_PAGEFAULT_FLAG_WP). The daemon tracks
// the writes with uffd-wp (the region's tracking is UFFD_WP). Every client that maps the
// same file this way shares the same pages and sees the others' writes at once; FLUSH
// writes the file's dirty pages of the region's range to the file, and the cache writes
// dirty pages back before it evicts them.
inline constexpr std::uint32_t k_map_shared = 1u << 2;
inline constexpr std::uint32_t k_map_known_flags = k_map_private_writable | k_map_cache | k_map_shared;

const char* type_name(Type t);              // "HELLO", ... or "?"
const char* error_code_name(ErrorCode c);   // "MALFORMED", ... or "?"
const char* capability_name(unsigned bit);  // "FILE_STORE", ... or nullptr
std::size_t fds_expected(Type t);           // descriptors a message of this type must carry

}  // namespace pagerd::proto
