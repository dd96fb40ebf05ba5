#include "region_table.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace pagerd::daemon {

SharedMemory::~SharedMemory()
{
    if (base) ::munmap(base, mapped);
}

std::uint64_t SharedMemory::bytes_needed(std::uint64_t length, std::uint64_t page)
{
    return length + (util::DirtyBitmap::bytes(length / page) + page - 1) / page * page;
}

const char* SharedMemory::unusable(int memfd)
{
    constexpr int k_required_seals = F_SEAL_SHRINK | F_SEAL_SEAL;
    const int seals = ::fcntl(memfd, F_GET_SEALS);
    if (seals < 0) return "it is not a memfd";
    if ((seals & k_required_seals) != k_required_seals)
        return "the memfd must be sealed with F_SEAL_SHRINK and F_SEAL_SEAL (create it with MFD_ALLOW_SEALING, "
               "size it, then F_ADD_SEALS), so that it cannot shrink under the daemon";
    if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
        return "the memfd must stay writable (no F_SEAL_WRITE or F_SEAL_FUTURE_WRITE)";
    const int fl = ::fcntl(memfd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) != O_RDWR) return "the memfd must be open for reading and writing";
    return nullptr;
}

std::shared_ptr<SharedMemory> SharedMemory::map(util::UniqueFd memfd, std::uint64_t length, std::uint64_t page,
                                                proto::ErrorCode& code, std::string& why)
{
    const std::uint64_t need = bytes_needed(length, page);
    struct stat st{};
    if (::fstat(memfd.get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) < need) {
        code = proto::ErrorCode::BAD_RANGE;
        why = "the memfd must hold the region and its dirty bitmap: " + std::to_string(need) + " bytes";
        return nullptr;
    }
    void* base = ::mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
    if (base == MAP_FAILED) {
        code = proto::ErrorCode::LIMIT;
        why = std::string("cannot map the memfd: ") + std::strerror(errno);
        return nullptr;
    }
    auto mem = std::make_shared<SharedMemory>();
    mem->memfd = std::move(memfd);
    mem->length = length;
    mem->base = static_cast<std::uint8_t*>(base);
    mem->mapped = need;
    mem->bitmap = util::DirtyBitmap(mem->base + length, length / page);
    return mem;
}

Region Region::slice(std::uint64_t from, std::uint64_t to) const
{
    Region r = *this;
    r.start = from;
    r.length = to - from;
    r.file_offset = file_offset + (from - start);
    r.mem_offset = mem_offset + (from - start);
    return r;
}

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

std::vector<Region> RegionTable::remove_id(std::uint64_t id)
{
    std::vector<Region> removed;
    for (auto it = m_by_start.begin(); it != m_by_start.end();) {
        if (it->second.id == id) {
            m_bytes -= it->second.length;
            removed.push_back(std::move(it->second));
            it = m_by_start.erase(it);
        } else {
            ++it;
        }
    }
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
        if (r.start < start) keep.push_back(r.slice(r.start, start));  // left remainder stays
        if (r.end() > end) keep.push_back(r.slice(end, r.end()));        // right remainder stays
        Region mid = r.slice(r.start > start ? r.start : start, r.end() < end ? r.end() : end);
        out.emplace(mid.start, std::move(mid));
    }
    for (auto& r : keep) insert(std::move(r));
    return out;
}

std::vector<Region> RegionTable::remove_range(std::uint64_t start, std::uint64_t length)
{
    std::vector<Region> removed;
    for (auto& [s, r] : cut(start, length)) removed.push_back(std::move(r));
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
