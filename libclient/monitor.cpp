#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

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
    auto next_writeback = std::chrono::steady_clock::now() + std::chrono::milliseconds(writeback_interval_ms);
    for (;;) {
        // events 0 on the socket: only hang-up and errors wake us; replies are left to
        // the requesting thread.
        pollfd p[2] = {{sock.get(), 0, 0}, {stop_fd.get(), POLLIN, 0}};
        int timeout = -1;
        if (writeback_interval_ms > 0)
            timeout = static_cast<int>(std::max<long>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                             next_writeback - std::chrono::steady_clock::now()).count()));
        const int r = ::poll(p, 2, timeout);
        if (r < 0) continue;
        if (p[1].revents) return;
        if (p[0].revents & (POLLHUP | POLLERR)) break;
        if (r == 0 && writeback_interval_ms > 0) {
            background_writeback();
            next_writeback = std::chrono::steady_clock::now() + std::chrono::milliseconds(writeback_interval_ms);
        }
    }
    alive.store(false);
    std::fprintf(stderr, "libpagerd: lost the connection to pagerd; touching pages of its "
                         "regions that were not loaded yet now raises SIGBUS\n");
    serve_orphaned_faults();
}

void Connection::Impl::background_writeback()
{
    std::lock_guard flush_lock(flush_mutex);
    for (const Mapping& m : shared_mappings())
        if (auto f = flush_mapping(m); !f && alive.load())
            std::fprintf(stderr, "libpagerd: background write-back of region %llu: %s\n",
                         static_cast<unsigned long long>(m.region.id), f.error().message.c_str());
}

// The daemon is gone but our copy of the userfaultfd keeps the regions registered: answer
// every fault with SIGBUS (or, without UFFDIO_POISON, SIGSEGV through PROT_NONE) instead
// of letting threads wait forever or letting them see zeros.
void Connection::Impl::serve_orphaned_faults()
{
    int async_fd = -1;
    {
        std::lock_guard lock(async_mutex);
        if (async_uffd) async_fd = async_uffd.get();
    }
    const int fds[2] = {uffd.get(), async_fd};
    {
        // Faults the daemon had read but not answered: wake them so that they fault again.
        std::lock_guard lock(regions_mutex);
        for (const auto& [id, m] : regions)
            for (int fd : fds)
                if (fd >= 0) util::uffd_wake(fd, reinterpret_cast<std::uint64_t>(m.region.addr), m.region.size);
    }
    // A child forked meanwhile: its userfaultfd arrives here, and its faults get SIGBUS too
    // (closed, its regions would read as zeros). Kept until the child is gone.
    std::vector<util::UniqueFd> children;
    for (;;) {
        std::vector<pollfd> p = {{stop_fd.get(), POLLIN, 0}, {fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        for (const auto& c : children) p.push_back({c.get(), POLLIN, 0});
        const int r = ::poll(p.data(), p.size(), children.empty() ? -1 : 1000);
        if (r < 0) continue;
        if (p[0].revents) return;
        for (std::size_t k = 1; k < p.size(); ++k) {
            const int fd = p[k].fd;
            if (fd < 0 || !p[k].revents) continue;
            uffd_msg msgs[32];
            const ssize_t n = ::read(fd, msgs, sizeof msgs);
            for (ssize_t i = 0; i < n / static_cast<ssize_t>(sizeof(uffd_msg)); ++i) {
                if (msgs[i].event == UFFD_EVENT_FORK) {
                    children.emplace_back(static_cast<int>(msgs[i].arg.fork.ufd));
                    continue;
                }
                if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;  // reading an event completes it
                const std::uint64_t page = msgs[i].arg.pagefault.address & ~(page_size - 1);
                if (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
                    // A write to a write-protected Shared page: nobody can write it back
                    // any more; let the write land in memory rather than block forever.
                    uffdio_writeprotect wp{{page, page_size}, 0};
                    ::ioctl(fd, UFFDIO_WRITEPROTECT, &wp);
                } else if (util::uffd_poison(fd, page, page_size) != 0 && k < 3) {
                    ::mprotect(reinterpret_cast<void*>(page), page_size, PROT_NONE);
                    util::uffd_wake(fd, page, page_size);
                }
            }
        }
        if (r == 0)  // once a second: let go of children that exited or exec'd
            std::erase_if(children, [](const util::UniqueFd& c) { return util::uffd_gone(c.get()); });
    }
}

}  // namespace pagerd::libclient
