#include "region_table.hpp"

#include <vector>

namespace pagerd::daemon {

const Region* RegionTable::find(std::uint64_t addr) const
{
    auto it = m_by_start.upper_bound(addr);
    if (it == m_by_start.begin()) return nullptr;
    --it;
    return addr < it->second.end() ? &it->second : nullptr;
}

bool RegionTable::overlaps(std::uint64_t start, std::uint64_t length) const
{
    const std::uint64_t end = start + length;
    auto it = m_by_start.lower_bound(end);  // first region starting at or after end
    if (it == m_by_start.begin()) return false;
    --it;  // last region starting before end
    return it->second.end() > start;
}

void RegionTable::insert(Region r)
{
    m_bytes += r.length;
    m_by_start.emplace(r.start, std::move(r));
}

std::uint64_t RegionTable::remove_id(std::uint64_t id)
{
    std::uint64_t removed = 0;
    for (auto it = m_by_start.begin(); it != m_by_start.end();) {
        if (it->second.id == id) {
            removed += it->second.length;
            it = m_by_start.erase(it);
        } else {
            ++it;
        }
    }
    m_bytes -= removed;
    return removed;
}

std::map<std::uint64_t, Region> RegionTable::cut(std::uint64_t start, std::uint64_t length)
{
    const std::uint64_t end = start + length;
    std::map<std::uint64_t, Region> out;
    std::vector<Region> keep;
    auto it = m_by_start.upper_bound(start);
    if (it != m_by_start.begin()) --it;
    while (it != m_by_start.end() && it->second.start < end) {
        Region r = it->second;
        if (r.end() <= start) {
            ++it;
            continue;
        }
        it = m_by_start.erase(it);
        m_bytes -= r.length;
        if (r.start < start) {  // left remainder stays
            Region left = r;
            left.length = start - r.start;
            keep.push_back(left);
        }
        if (r.end() > end) {  // right remainder stays
            Region right = r;
            right.start = end;
            right.length = r.end() - end;
            right.file_offset = r.file_offset + (end - r.start);
            keep.push_back(right);
        }
        Region mid = r;
        mid.start = r.start > start ? r.start : start;
        const std::uint64_t mid_end = r.end() < end ? r.end() : end;
        mid.length = mid_end - mid.start;
        mid.file_offset = r.file_offset + (mid.start - r.start);
        out.emplace(mid.start, std::move(mid));
    }
    for (auto& r : keep) insert(std::move(r));
    return out;
}

std::uint64_t RegionTable::remove_range(std::uint64_t start, std::uint64_t length)
{
    std::uint64_t removed = 0;
    for (const auto& [s, r] : cut(start, length)) removed += r.length;
    return removed;
}

void RegionTable::move_range(std::uint64_t from, std::uint64_t to, std::uint64_t length)
{
    auto moved = cut(from, length);
    remove_range(to, length);  // mremap replaced whatever was at the destination
    for (auto& [s, r] : moved) {
        r.start = r.start - from + to;
        insert(std::move(r));
    }
}

}  // namespace pagerd::daemon
