// The zero store: demand-zero memory of a given size, for tests and anonymous use (UMap).
// Every read is zeros, at once. Nothing needs writing anywhere: a clean page the cache
// evicts reads as zeros again, and Shared regions are refused (their written pages could
// never be evicted, having nowhere to go); a PrivateWritable region's written pages are the
// client's own memory, as with MAP_PRIVATE | MAP_ANONYMOUS. Each MAP_STORE of "zero:SIZE"
// makes a store of its own: two regions never share one.
#pragma once
#include <memory>
#include <string>

#include "store.hpp"

namespace pagerd::daemon::store {

class ZeroStore final : public Store {
public:
    explicit ZeroStore(std::uint64_t size);
    const char* kind() const override { return "zero"; }
    std::string name() const override { return "zero:" + std::to_string(m_size); }
    Identity identity() const override { return m_identity; }
    std::int64_t size() const override { return static_cast<std::int64_t>(m_size); }
    bool writable() const override { return false; }
    ssize_t read_now(void* buf, std::uint64_t len, std::uint64_t off) override;
    void prep_read(io_uring_sqe* sqe, void* buf, unsigned len, std::uint64_t off, bool fixed, bool background) override;
    ssize_t write(const void*, std::uint64_t, std::uint64_t) override;
    int sync() override { return 0; }
    void prep_write(io_uring_sqe* sqe, const void* buf, unsigned len, std::uint64_t off) override;
    void will_need(std::uint64_t, std::uint64_t) override {}
    void loaded(std::uint64_t, std::uint64_t) override {}
    int descriptor() const override { return -1; }
    std::shared_ptr<Store> reopen_for_writing(std::string& why) const override;

private:
    std::uint64_t m_size;
    Identity m_identity;
};

// Identities of stores that are not files: `a` is a value no device number takes.
inline constexpr std::uint64_t k_identity_nbd = 0xffffffff00000001ull;
inline constexpr std::uint64_t k_identity_zero = 0xffffffff00000002ull;

}  // namespace pagerd::daemon::store
