// The file store: a regular file, through the descriptor the client passed. Hot data is
// read at once (preadv2 RWF_NOWAIT), cold data through io_uring; after a load the kernel's
// copy of the range is dropped (POSIX_FADV_DONTNEED): the daemon's page cache holds it.
#pragma once
#include <memory>
#include <string>

#include "pagerd/util/unique_fd.hpp"
#include "store.hpp"

namespace pagerd::daemon::store {

class FileStore final : public Store {
public:
    // Null with why when `fd` is not a regular file open for reading.
    static std::shared_ptr<FileStore> open(util::UniqueFd fd, std::string& why);

    const char* kind() const override { return "file"; }
    std::string name() const override
    {
        return "file:" + std::to_string(m_identity.a) + ":" + std::to_string(m_identity.b);
    }
    Identity identity() const override { return m_identity; }
    std::int64_t size() const override;
    bool writable() const override { return m_writable; }
    ssize_t read_now(void* buf, std::uint64_t len, std::uint64_t off) override;
    void prep_read(io_uring_sqe* sqe, void* buf, unsigned len, std::uint64_t off, bool fixed,
                   bool background) override;
    ssize_t write(const void* buf, std::uint64_t len, std::uint64_t off) override;
    int sync() override;
    void prep_write(io_uring_sqe* sqe, const void* buf, unsigned len, std::uint64_t off) override;
    void will_need(std::uint64_t off, std::uint64_t len) override;
    void loaded(std::uint64_t off, std::uint64_t len) override;
    int descriptor() const override { return m_fd.get(); }
    std::shared_ptr<Store> reopen_for_writing(std::string& why) const override;

    bool direct_io() const { return m_direct; }
    bool append_only() const { return m_append; }

private:
    FileStore() = default;
    util::UniqueFd m_fd;
    Identity m_identity;
    bool m_writable = false;
    bool m_direct = false;  // O_DIRECT: RWF_NOWAIT would still wait for the disk
    bool m_append = false;  // O_APPEND: pwrite would append, whatever the offset
};

}  // namespace pagerd::daemon::store
