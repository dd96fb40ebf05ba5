// One client's regions, ordered by start address. Kept true to the client's address space
// as UNMAP / REMAP events split, trim and move regions.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <vector>

#include "pagerd/proto/constants.hpp"
#include "pagerd/util/dirty_bitmap.hpp"
#include "pagerd/util/unique_fd.hpp"
#include "stats.hpp"
#include "store/store.hpp"

namespace pagerd::daemon {

class Cache;

// The daemon's view of a Shared region's memfd: [0, length) holds the pages, the tail
// the dirty bitmap. Mapped read-write here; the daemon only ever reads pages that the
// memfd holds (SEEK_DATA), so that it never creates one the client would see as zeros.
struct SharedMemory {
    util::UniqueFd memfd;
    std::shared_ptr<store::Store> store;  // opened read-write by the client
    std::uint64_t file_base = 0;  // file offset of memfd offset 0
    std::uint64_t length = 0;     // bytes of pages
    std::uint8_t* base = nullptr;
    std::uint64_t mapped = 0;
    util::DirtyBitmap bitmap;
    ~SharedMemory();

    // The memfd bytes a region of `length` needs: its pages, then the bitmap, page-aligned.
    static std::uint64_t bytes_needed(std::uint64_t length, std::uint64_t page);
    // Why `memfd` cannot be a region's memory, nullptr when it can: it must be a memfd
    // sealed against shrinking (the daemon maps it: a read past a shrunk end would be
    // SIGBUS in the daemon) with its seals frozen, and writable.
    static const char* unusable(int memfd);
    // Maps a memfd that passed unusable() for a region of `length`; on failure returns
    // null with the protocol's error (BAD_RANGE: too small; LIMIT: mmap failed) and why.
    static std::shared_ptr<SharedMemory> map(util::UniqueFd memfd, std::uint64_t length, std::uint64_t page,
                                             proto::ErrorCode& code, std::string& why);
};

// A sequential stream the read-ahead follows (readahead.cpp).
struct Stream {
    std::uint64_t next = 0;    // address just past what the stream has loaded or is loading
    std::uint64_t marker = 0;  // page held back from the last window: a fault there means the
                               // client reached that window, time to read the next one
    std::uint64_t window = 0;  // bytes of the next read-ahead
    std::uint64_t used = 0;    // last use, for replacing the oldest stream
};

// What the pieces of one region share: policy, read-ahead state and figures.
struct RegionState {
    proto::Prefetch prefetch = proto::Prefetch::SEQUENTIAL;
    Histogram latency;
    std::atomic<std::uint64_t> faults{0};
    std::atomic<std::uint64_t> prefetch_pending{0};  // bytes queued by fills and PREFETCH
    static constexpr unsigned k_streams = 4;
    std::array<Stream, k_streams> streams{};  // touched by the client's worker only
    std::uint64_t stream_clock = 0;
};

struct Region {
    std::uint64_t id = 0;
    std::uint64_t start = 0;
    std::uint64_t length = 0;
    std::uint64_t file_offset = 0;  // of `start`
    proto::Access access = proto::Access::READ_ONLY;
    proto::Tracking tracking = proto::Tracking::NONE;
    unsigned uffd_slot = 0;  // which of the client's userfaultfds the memory is registered with
    std::shared_ptr<store::Store> store;   // where the bytes live; shared by the pieces of a split region
    std::shared_ptr<SharedMemory> mem;     // Shared regions
    std::shared_ptr<class Cache> cache;    // CACHE regions: the file's page cache (cache offset = file offset)
    std::uint64_t mem_offset = 0;          // memfd offset of `start`
    std::shared_ptr<RegionState> state = std::make_shared<RegionState>();  // shared by the pieces

    std::uint64_t end() const { return start + length; }
    bool shared() const { return access == proto::Access::SHARED; }
    // The piece [from, to) of this region, offsets adjusted.
    Region slice(std::uint64_t from, std::uint64_t to) const;
};

class RegionTable {
public:
    const Region* find(std::uint64_t addr) const;
    bool overlaps(std::uint64_t start, std::uint64_t length) const;
    void insert(Region r);
    // Each returns the pieces removed from the table.
    std::vector<Region> remove_id(std::uint64_t id);
    std::vector<Region> remove_range(std::uint64_t start, std::uint64_t length);
    // mremap: the pieces in [from, from+length) now live at [to, to+length).
    void move_range(std::uint64_t from, std::uint64_t to, std::uint64_t length);

    std::size_t count() const { return m_by_start.size(); }
    std::uint64_t bytes() const { return m_bytes; }
    template <class F>
    void for_each(F&& f) const
    {
        for (const auto& [start, r] : m_by_start) f(r);
    }

private:
    // Removes [start, start+length) and returns the removed pieces (clipped).
    std::map<std::uint64_t, Region> cut(std::uint64_t start, std::uint64_t length);
    std::map<std::uint64_t, Region> m_by_start;
    std::uint64_t m_bytes = 0;
};

}  // namespace pagerd::daemon
