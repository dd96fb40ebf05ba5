// One client's regions, ordered by start address. Kept true to the client's address space
// as UNMAP / REMAP events split, trim and move regions.
#pragma once
#include <cstdint>
#include <map>
#include <memory>

#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon {

struct Region {
    std::uint64_t id = 0;
    std::uint64_t start = 0;
    std::uint64_t length = 0;
    std::uint64_t file_offset = 0;  // of `start`
    bool writable = false;
    std::shared_ptr<util::UniqueFd> file;  // shared by the pieces of a split region

    std::uint64_t end() const { return start + length; }
};

class RegionTable {
public:
    const Region* find(std::uint64_t addr) const;
    bool overlaps(std::uint64_t start, std::uint64_t length) const;
    void insert(Region r);
    // Each returns the number of bytes removed from the table.
    std::uint64_t remove_id(std::uint64_t id);
    std::uint64_t remove_range(std::uint64_t start, std::uint64_t length);
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
