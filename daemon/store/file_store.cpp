#include "file_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pagerd::daemon::store {

std::shared_ptr<FileStore> FileStore::open(util::UniqueFd fd, std::string& why)
{
    const int fl = ::fcntl(fd.get(), F_GETFL);
    struct stat st{};
    if (fl < 0 || (fl & O_PATH) || (fl & O_ACCMODE) == O_WRONLY) {
        why = "the file descriptor is not open for reading";
        return nullptr;
    }
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
        why = "the file descriptor is not a regular file";
        return nullptr;
    }
    std::shared_ptr<FileStore> s(new FileStore);
    s->m_fd = std::move(fd);
    s->m_identity = {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
    s->m_writable = (fl & O_ACCMODE) == O_RDWR;
    s->m_direct = (fl & O_DIRECT) != 0;
    s->m_append = (fl & O_APPEND) != 0;
    return s;
}

std::int64_t FileStore::size() const
{
    struct stat st{};
    if (::fstat(m_fd.get(), &st) != 0) return -errno;
    return st.st_size;
}

ssize_t FileStore::read_now(void* buf, std::uint64_t len, std::uint64_t off)
{
    if (m_direct) return -1;
    iovec iov{buf, len};
    const ssize_t n = ::preadv2(m_fd.get(), &iov, 1, static_cast<off_t>(off), RWF_NOWAIT);
    return n >= 0 ? n : -1;
}

void FileStore::prep_read(io_uring_sqe* sqe, void* buf, unsigned len, std::uint64_t off, bool fixed,
                          bool background)
{
    if (fixed)  // registered: the kernel need not pin the pages for every read
        io_uring_prep_read_fixed(sqe, m_fd.get(), buf, len, off, 0);
    else
        io_uring_prep_read(sqe, m_fd.get(), buf, len, off);
    // Reads no thread waits for yet go to io_uring's own workers, on the other CPU if it
    // is free: the worker keeps its CPU for UFFDIO_COPY and faults.
    if (background) io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
}

ssize_t FileStore::write(const void* buf, std::uint64_t len, std::uint64_t off)
{
    ssize_t n;
    do
        n = ::pwrite(m_fd.get(), buf, len, static_cast<off_t>(off));
    while (n < 0 && errno == EINTR);
    return n;
}

int FileStore::sync() { return ::fdatasync(m_fd.get()) == 0 ? 0 : errno; }

void FileStore::prep_write(io_uring_sqe* sqe, const void* buf, unsigned len, std::uint64_t off)
{
    io_uring_prep_write(sqe, m_fd.get(), buf, len, off);
}

std::shared_ptr<Store> FileStore::reopen_for_writing(std::string& why) const
{
    if (!m_writable) {
        why = "the file is not open for writing";
        return nullptr;
    }
    const std::string path = "/proc/self/fd/" + std::to_string(m_fd.get());
    util::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) {
        why = "reopening the file for write-back failed: " + std::string(std::strerror(errno));
        return nullptr;
    }
    auto s = open(std::move(fd), why);
    if (s && s->m_identity != m_identity) {  // replaced meanwhile? never write another file
        why = "the file changed while it was reopened for write-back";
        return nullptr;
    }
    return s;
}

void FileStore::will_need(std::uint64_t off, std::uint64_t len)
{
    ::posix_fadvise(m_fd.get(), static_cast<off_t>(off), static_cast<off_t>(len), POSIX_FADV_WILLNEED);
}

void FileStore::loaded(std::uint64_t off, std::uint64_t len)
{
    // The kernel drops only the folios wholly inside the range, and file systems cache in
    // large folios (up to 2 MiB on ext4 here): a 256 KiB range drops next to nothing
    // (pagerd-bench --cases second-copy: 1009 of 1024 MiB stayed cached after a scan). So
    // the 2 MiB-aligned blocks whose end this load reached go whole: a scan drops each
    // block once it has loaded all of it.
    constexpr std::uint64_t k_block = std::uint64_t{2} << 20;
    const std::uint64_t from = off / k_block * k_block, to = (off + len) / k_block * k_block;
    if (to > from)
        ::posix_fadvise(m_fd.get(), static_cast<off_t>(from), static_cast<off_t>(to - from), POSIX_FADV_DONTNEED);
    ::posix_fadvise(m_fd.get(), static_cast<off_t>(off), static_cast<off_t>(len), POSIX_FADV_DONTNEED);
}

}  // namespace pagerd::daemon::store
