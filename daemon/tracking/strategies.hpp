// The three strategies (tracking.hpp), for the files that implement them.
#pragma once
#include "tracking.hpp"

namespace pagerd::daemon::tracking {

class ClientSide : public Strategy {
public:
    bool install_protected() const override { return m_protected; }
    bool written(int uffd, const Region& r, std::uint64_t page, std::uint32_t page_size) const override;
    void collect(int uffd, const Region& r, WriteJob& job, std::uint32_t page_size) const override;
    void forget(const Region& r, WriteJob& job, std::uint32_t page_size) const override;
    std::uint64_t dirty_pages(const Region& r, std::uint32_t page_size) const override;
    explicit ClientSide(bool installs_protected) : m_protected(installs_protected) {}

private:
    bool m_protected;  // async: pages go in protected; the kernel lifts it and records the write
};

class UffdWp final : public ClientSide {
public:
    UffdWp() : ClientSide(true) {}
    bool written(int uffd, const Region& r, std::uint64_t page, std::uint32_t page_size) const override;
    void collect(int uffd, const Region& r, WriteJob& job, std::uint32_t page_size) const override;
};

class CacheWp final : public Strategy {
public:
    bool install_protected() const override { return true; }
    bool written(int uffd, const Region& r, std::uint64_t page, std::uint32_t page_size) const override;
    void collect(int uffd, const Region& r, WriteJob& job, std::uint32_t page_size) const override;
    void forget(const Region& r, WriteJob& job, std::uint32_t page_size) const override;
    std::uint64_t dirty_pages(const Region& r, std::uint32_t page_size) const override;
};

}  // namespace pagerd::daemon::tracking
