// The in-process userfaultfd baseline: what a minimal fault loop of one's own costs, with
// no daemon, no socket and no file I/O on the fault path. The file is read into anonymous
// memory first; a fresh anonymous region is registered MISSING with this process's own
// userfaultfd; one handler thread does a blocking read() of the uffd and UFFDIO_COPY of the
// faulting 4 KiB page from the copy.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "bench.hpp"
#include "pagerd/util/uffd.hpp"

namespace pagerd::bench {
namespace {

Error sys_error(const std::string& what, int e = errno) { return Error::system(e, what + ": " + std::strerror(e)); }

// A blocking userfaultfd (no O_NONBLOCK): user-mode-only first (allowed to anyone), else
// /dev/userfaultfd, else the plain system call.
Result<util::UniqueFd> open_uffd(std::string& how)
{
    int fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    if (fd >= 0) {
        how = "userfaultfd(UFFD_USER_MODE_ONLY)";
        return util::UniqueFd(fd);
    }
    const int e1 = errno;
    if (const int dev = ::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC); dev >= 0) {
        fd = ::ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
        ::close(dev);
        if (fd >= 0) {
            how = "/dev/userfaultfd";
            return util::UniqueFd(fd);
        }
    }
    fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC));
    if (fd >= 0) {
        how = "userfaultfd()";
        return util::UniqueFd(fd);
    }
    return sys_error("userfaultfd (user-mode-only, /dev/userfaultfd and plain all failed; first error)", e1);
}

struct Mapping {
    void* p = MAP_FAILED;
    std::size_t n = 0;
    ~Mapping()
    {
        if (p != MAP_FAILED) ::munmap(p, n);
    }
};

}  // namespace

Result<Measure> measure_uffd_loop(int fd, std::uint64_t bytes, const std::vector<std::uint32_t>& pages,
                                  unsigned threads, std::string* how_out)
{
    // The in-memory copy of the file (populated by the reads).
    Mapping copy;
    copy.n = bytes;
    copy.p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy.p == MAP_FAILED) return sys_error("mmap of the in-memory copy");
    auto* src = static_cast<unsigned char*>(copy.p);
    for (std::uint64_t off = 0; off < bytes;) {
        const ssize_t r = ::pread(fd, src + off, bytes - off, static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r ? sys_error("reading the file into memory") : Error::system(EIO, "the file is shorter than expected");
        off += static_cast<std::uint64_t>(r);
    }

    std::string how;
    auto uffd = open_uffd(how);
    if (!uffd) return uffd.error();
    if (how_out) *how_out = how;
    const int u = uffd->get();
    uffdio_api api{};
    api.api = UFFD_API;
    if (::ioctl(u, UFFDIO_API, &api) != 0) return sys_error("UFFDIO_API");

    // The region, one extra page at the end: touching it after the clock stops tells the
    // handler thread to finish (its read() blocks until a fault arrives).
    Mapping region;
    region.n = bytes + k_page;
    region.p = ::mmap(nullptr, region.n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region.p == MAP_FAILED) return sys_error("mmap of the region");
    ::madvise(region.p, region.n, MADV_NOHUGEPAGE);
    const auto base = reinterpret_cast<std::uintptr_t>(region.p);
    uffdio_register reg{};
    reg.range = {base, region.n};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(u, UFFDIO_REGISTER, &reg) != 0) return sys_error("UFFDIO_REGISTER");

    const std::uintptr_t stop_page = base + bytes;
    std::string handler_error;  // written by the handler thread only, read after join
    std::thread handler([&] {
        uffd_msg msgs[16];
        for (;;) {
            const ssize_t n = ::read(u, msgs, sizeof msgs);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n <= 0) {
                handler_error = n ? std::string("read of the userfaultfd: ") + std::strerror(errno)
                                  : "read of the userfaultfd returned 0";
                return;  // the touching threads would hang: cannot happen with a working uffd
            }
            bool stop = false;
            for (std::size_t i = 0; i < static_cast<std::size_t>(n) / sizeof msgs[0]; ++i) {
                if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
                const std::uintptr_t page = msgs[i].arg.pagefault.address & ~(k_page - 1);
                stop |= page == stop_page;
                uffdio_copy c{};
                c.dst = page;
                c.src = reinterpret_cast<std::uintptr_t>(src + (page == stop_page ? 0 : page - base));
                c.len = k_page;
                while (::ioctl(u, UFFDIO_COPY, &c) != 0 && errno != EEXIST) {
                    if (errno == EAGAIN) continue;
                    if (handler_error.empty()) handler_error = std::string("UFFDIO_COPY: ") + std::strerror(errno);
                    uffdio_zeropage z{};  // never leave a thread hanging: zeros fail the checksum
                    z.range = {page, k_page};
                    ::ioctl(u, UFFDIO_ZEROPAGE, &z);
                    break;
                }
            }
            if (stop) return;
        }
    });
    const Measure m = touch(region.p, pages, threads);
    [[maybe_unused]] volatile unsigned char last = *reinterpret_cast<const volatile unsigned char*>(stop_page);
    handler.join();
    if (!handler_error.empty()) return Error::system(EIO, "uffd loop handler: " + handler_error);
    return m;
}

}  // namespace pagerd::bench
