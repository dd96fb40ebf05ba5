#include "uffd_setup.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "pagerd/util/uffd.hpp"

namespace pagerd::libclient {
namespace {

// Features we ask for when the kernel has them: the daemon keeps its region table true
// through the events, and POISON lets it raise SIGBUS for faults it cannot serve.
// Shared regions add shmem support and write-protection (synchronous on the main uffd,
// asynchronous on the second).
constexpr std::uint64_t k_wanted = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE |
                                   UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_POISON |
                                   UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_PAGEFAULT_FLAG_WP |
                                   UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_MINOR_SHMEM;

int open_uffd(bool user_mode_only)
{
    const int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
    if (!user_mode_only) {
        util::UniqueFd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
        if (dev) {
            const int fd = ::ioctl(dev.get(), USERFAULTFD_IOC_NEW, flags);
            if (fd >= 0) return fd;
        }
    }
    return static_cast<int>(::syscall(SYS_userfaultfd, flags));
}

Result<std::uint64_t> api(int fd, std::uint64_t features)
{
    uffdio_api a{};
    a.api = UFFD_API;
    a.features = features;
    if (::ioctl(fd, UFFDIO_API, &a) != 0)
        return Error::system(errno, std::string("UFFDIO_API failed: ") + std::strerror(errno));
    return static_cast<std::uint64_t>(a.features);
}

}  // namespace

Result<Uffd> create_uffd(bool async_wp, bool fork)
{
    const char* mode = std::getenv("PAGERD_UFFD_MODE");
    const bool force_user = mode && std::strcmp(mode, "user-only") == 0;
    Uffd u;
    int saved = 0;
    if (!force_user) {
        u.fd.reset(open_uffd(false));
        saved = errno;
    }
    if (!u.fd) {
        u.fd.reset(open_uffd(true));
        u.user_mode_only = true;
    }
    if (!u.fd)
        return Error::system(errno, std::string("cannot create a userfaultfd: ") + std::strerror(saved ? saved : errno) +
                                        " (needs /dev/userfaultfd access, CAP_SYS_PTRACE, or "
                                        "vm.unprivileged_userfaultfd=1)");
    // Probe what this kernel offers on a throw-away descriptor: UFFDIO_API runs once per fd.
    util::UniqueFd probe(open_uffd(u.user_mode_only));
    std::uint64_t available = 0;
    if (probe) {
        auto got = api(probe.get(), 0);
        if (got) available = got.value();
    }
    // UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE (the kernel refuses the whole
    // UFFDIO_API with EPERM otherwise): asked for only where a probe shows it is allowed.
    if (fork && (available & UFFD_FEATURE_EVENT_FORK)) {
        util::UniqueFd fork_probe(open_uffd(u.user_mode_only));
        if (!fork_probe || !api(fork_probe.get(), UFFD_FEATURE_EVENT_FORK)) fork = false;
    }
    u.available = available;
    // EVENT_FORK on the main userfaultfd only: a forked child keeps the regions registered
    // there (the daemon receives the child's userfaultfd); the second one's regions are
    // MADV_DONTFORK.
    const std::uint64_t requested =
        (k_wanted | (async_wp ? UFFD_FEATURE_WP_ASYNC : 0) | (fork && !async_wp ? UFFD_FEATURE_EVENT_FORK : 0)) &
        available;
    if (async_wp && !(requested & UFFD_FEATURE_WP_ASYNC))
        return Error::system(ENOTSUP, "this kernel has no UFFD_FEATURE_WP_ASYNC (needs 6.7 or newer)");
    auto granted = api(u.fd.get(), requested);
    if (!granted) return granted.error();
    u.features = requested;  // UFFDIO_API answers with every available feature, not the enabled ones
    return u;
}

}  // namespace pagerd::libclient
