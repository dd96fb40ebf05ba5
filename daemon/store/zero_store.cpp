#include "zero_store.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>

namespace pagerd::daemon::store {

ZeroStore::ZeroStore(std::uint64_t size) : m_size(size)
{
    static std::atomic<std::uint64_t> serial{1};
    m_identity = {k_identity_zero, serial.fetch_add(1)};
}

ssize_t ZeroStore::read_now(void* buf, std::uint64_t len, std::uint64_t off)
{
    if (off >= m_size) return 0;
    const std::uint64_t n = len < m_size - off ? len : m_size - off;
    std::memset(buf, 0, n);
    stats().reads.fetch_add(1, std::memory_order_relaxed);
    stats().read_bytes.fetch_add(n, std::memory_order_relaxed);
    return static_cast<ssize_t>(n);
}

void ZeroStore::prep_read(io_uring_sqe* sqe, void*, unsigned, std::uint64_t, bool, bool)
{
    io_uring_prep_nop(sqe);  // never used: read_now() always answers
}

ssize_t ZeroStore::write(const void*, std::uint64_t, std::uint64_t)
{
    errno = EROFS;
    return -1;
}

void ZeroStore::prep_write(io_uring_sqe* sqe, const void*, unsigned, std::uint64_t) { io_uring_prep_nop(sqe); }

std::shared_ptr<Store> ZeroStore::reopen_for_writing(std::string& why) const
{
    why = "a zero store is not written anywhere";
    return nullptr;
}

}  // namespace pagerd::daemon::store
