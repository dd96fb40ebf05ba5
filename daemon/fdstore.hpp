// Keeping clients across a restart of the daemon: every client's connection, userfaultfds,
// files and memfds go into systemd's file-descriptor store (FDSTORE=1 with FDNAME=), with
// a small memfd per client that describes its regions. A new daemon gets them back through
// LISTEN_FDS / LISTEN_FDNAMES and serves on; clients never notice more than a pause.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon {

struct Client;
class Cache;
class CachePool;

namespace fdstore {

// True when a service manager listens (NOTIFY_SOCKET) and --fd-store is on.
bool enabled();
void set_enabled(bool on);

// Stores what of c is not stored yet and rewrites c's state memfd.
void save(Client& c);
// Removes every descriptor of c from the store (the client is gone for good).
void forget(const Client& c);
// Removes the descriptors of one region of c.
void forget_region(Client& c, std::uint64_t region_id);
// A page cache, stored once however many regions map it (systemd keeps one copy of a
// descriptor stored twice), as "cache.<dev>.<ino>"; removed when the cache closes.
void store_cache(const Cache& cache);
void forget_cache(const Cache& cache);
std::string cache_name(std::uint64_t dev, std::uint64_t ino);
std::string cache_bits_name(std::uint64_t dev, std::uint64_t ino);  // its dirty set (Shared regions)
std::string cache_file_name(std::uint64_t dev, std::uint64_t ino);  // its write-back descriptor

// Descriptors passed back at start, by name.
using Passed = std::map<std::string, util::UniqueFd>;
// Rebuilds the clients stored by an earlier daemon; what cannot be used is closed and
// logged. `page` is the page size; the clients come with regions, uffds and socket.
std::vector<std::unique_ptr<Client>> restore(Passed& passed, std::uint32_t page, CachePool& cache);

// What a client's state memfd says (the text save() writes), read by restore() before it
// touches any descriptor. A pure function of the text, so that it can be fuzzed alone
// (fuzz/fuzz_fdstore.cpp).
struct StoredRegion {
    std::uint64_t id = 0, start = 0, length = 0, file_offset = 0;
    unsigned access = 0, tracking = 0, uffd_slot = 0;
    std::uint64_t mem_offset = 0, file_base = 0, mem_length = 0, mapped = 0;
    unsigned prefetch = 0;  // absent in the state of older daemons: 0
    unsigned cached = 0;    // a CACHE region (its cache memfd is stored as rN.cache); absent: 0
};
struct StoredClient {
    std::uint64_t serial = 0;
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::string name;
    bool hello_done = false;
    std::uint32_t uffd_flags = 0;
    std::uint64_t features[2] = {0, 0};
    std::uint64_t next_region_id = 0;
    std::uint64_t forked_from = 0;  // a forked child (no socket): its parent's serial; absent: 0
    // A forked child's regions that could not be kept (stores the daemon reaches itself):
    // start and length of each, poisoned by the next daemon.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> lost;
    std::vector<StoredRegion> regions;
};
// Never throws; nullopt when the text is not a state save() could have written.
std::optional<StoredClient> parse_state(const std::string& text);

}  // namespace fdstore
}  // namespace pagerd::daemon
