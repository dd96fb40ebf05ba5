#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>

#include "connection_impl.hpp"
#include "pagerd/util/uffd.hpp"

namespace pagerd::libclient {

void Connection::Impl::start_monitor()
{
    stop_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    monitor = std::thread([this] { monitor_loop(); });
}

void Connection::Impl::stop_monitor()
{
    if (!monitor.joinable()) return;
    const std::uint64_t one = 1;
    (void)!::write(stop_fd.get(), &one, sizeof one);
    monitor.join();
}

void Connection::Impl::monitor_loop()
{
    for (;;) {
        // events 0 on the socket: only hang-up and errors wake us; replies are left to
        // the requesting thread.
        pollfd p[2] = {{sock.get(), 0, 0}, {stop_fd.get(), POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) continue;
        if (p[1].revents) return;
        if (p[0].revents & (POLLHUP | POLLERR)) break;
    }
    alive.store(false);
    std::fprintf(stderr, "libpagerd: lost the connection to pagerd; touching pages of its "
                         "regions that were not loaded yet now raises SIGBUS\n");
    serve_orphaned_faults();
}

// The daemon is gone but our copy of the userfaultfd keeps the regions registered: answer
// every fault with SIGBUS (or, without UFFDIO_POISON, SIGSEGV through PROT_NONE) instead
// of letting threads wait forever or letting them see zeros.
void Connection::Impl::serve_orphaned_faults()
{
    const int fd = uffd.get();
    {
        // Faults the daemon had read but not answered: wake them so that they fault again.
        std::lock_guard lock(regions_mutex);
        for (const auto& [id, r] : regions)
            util::uffd_wake(fd, reinterpret_cast<std::uint64_t>(r.addr), r.size);
    }
    for (;;) {
        pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd.get(), POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) continue;
        if (p[1].revents) return;
        uffd_msg msgs[32];
        const ssize_t n = ::read(fd, msgs, sizeof msgs);
        if (n <= 0) continue;
        for (ssize_t i = 0; i < n / static_cast<ssize_t>(sizeof(uffd_msg)); ++i) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;  // reading an event completes it
            const std::uint64_t page = msgs[i].arg.pagefault.address & ~(page_size - 1);
            if (util::uffd_poison(fd, page, page_size) != 0) {
                ::mprotect(reinterpret_cast<void*>(page), page_size, PROT_NONE);
                util::uffd_wake(fd, page, page_size);
            }
        }
    }
}

}  // namespace pagerd::libclient
