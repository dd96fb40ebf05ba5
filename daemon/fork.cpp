// Forked children (capability FORK). A client's userfaultfd has UFFD_FEATURE_EVENT_FORK:
// when the client forks, the kernel gives the child's copies of its registered regions a
// userfaultfd of their own and hands it to us in UFFD_EVENT_FORK. The child becomes a
// client of this worker without a socket: it has the regions it inherited, its faults are
// served like any client's, its UNMAP / REMAP / REMOVE events keep its table true, and a
// grandchild arrives the same way. Nothing tells us when the child exits or execs: its
// userfaultfd's ioctls then fail with ESRCH, which reap_forked() probes for.
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "fdstore.hpp"
#include "pagerd/util/uffd.hpp"
#include "worker.hpp"

namespace pagerd::daemon {
namespace {

constexpr auto k_reap_interval = std::chrono::milliseconds(200);

// A page in none of c's regions (so probing it changes nothing), below every address a
// region is likely to have.
std::uint64_t probe_page(const Client& c, std::uint64_t page)
{
    std::uint64_t a = 0x10000;
    while (c.regions.find(a)) a += page;
    return a;
}

}  // namespace

void Worker::on_fork(Client& parent, unsigned slot, util::UniqueFd child_uffd)
{
    if (!child_uffd) return;
    auto child = std::make_unique<Client>();
    child->serial = m_ctx.next_client_serial.fetch_add(1);
    child->peer = parent.peer;
    child->peer.pid = 0;  // unknown: the event does not say
    child->name = (parent.name.empty() ? std::string("client") : parent.name) + " (forked from client " +
                  std::to_string(parent.serial) + ")";
    child->forked_from = parent.serial;
    child->hello_done = true;
    child->uffds[0].fd = std::move(child_uffd);
    child->uffds[0].features = parent.uffds[slot].features;
    child->uffd_flags = slot == 0 ? parent.uffd_flags : 0;
    child->next_region_id = parent.next_region_id;
    // The regions registered with the userfaultfd that forked, as the parent had them when
    // it forked (its earlier events were read before this one). Regions with a memfd of
    // their own are not copied: their tracking is the parent process's (libclient keeps
    // them from a child with MADV_DONTFORK; a child that has them anyway gets SIGBUS).
    parent.regions.for_each([&](const Region& r) {
        if (r.uffd_slot != slot || r.mem) return;
        Region copy = r;
        copy.uffd_slot = 0;
        child->regions.insert(std::move(copy));
    });
    child->uffds[0].op.client = child.get();
    child->uffds[0].op.slot = 0;
    child->uffds[1].op.client = child.get();
    child->uffds[1].op.slot = 1;
    spdlog::info("client {} forked: client {} serves the child's {} region(s)", parent.serial, child->serial,
                 child->regions.count());
    m_ctx.connections.fetch_add(1);
    fdstore::save(*child);  // a restart keeps it (with the store's copy of its userfaultfd)
    (void)enlist(std::move(child));
}

void Worker::reap_forked(Clock::time_point now)
{
    if (now - m_last_reap < k_reap_interval) return;
    m_last_reap = now;
    for (auto it = m_clients.begin(); it != m_clients.end();) {
        Client& c = *(it++)->second;  // closing may erase c
        if (!c.forked_from || c.closing) continue;
        if (c.regions.count() == 0)
            close_client(c, "the forked child unmapped every region");  // it can never fault again
        else if (util::uffd_gone(c.uffds[0].fd.get(), probe_page(c, m_ctx.page_size), m_ctx.page_size))
            close_client(c, "the forked child exited or exec'd");
    }
}

// The child lives on (the daemon stops, say) and its userfaultfd is about to close: its
// regions would then be plain mappings of the cache or of zeros, and a page not loaded yet
// would read wrong. Poison markers on every page it has not mapped make those raise SIGBUS
// instead, as a parent's do once its daemon is gone; the pages it has mapped stay (the
// caches keep them when the daemon stops).
void Worker::poison_unloaded(Client& c)
{
    const int fd = c.uffds[0].fd.get();
    const std::uint64_t ps = m_ctx.page_size;
    if (util::uffd_gone(fd, probe_page(c, ps), ps)) return;
    // Its mapped pages stay right only while the caches keep them.
    if (m_stopping && m_ctx.cache) m_ctx.cache->spare_pages();
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges = c.lost;
    c.regions.for_each([&](const Region& r) { ranges.emplace_back(r.start, r.length); });
    auto poison_all = [&](int ufd) {
        bool blocked = false;
        for (const auto& [start, length] : ranges)
            blocked = util::uffd_poison_holes(ufd, start, start + length, ps) == EAGAIN || blocked;
        return blocked;
    };
    // An event the child waits on (munmap, mremap, madvise, fork) holds the ioctls up until
    // it is read: read them (what they change no longer matters here) and go again. A
    // grandchild forked meanwhile gets the same markers before its userfaultfd closes.
    for (int round = 0; round < 16 && poison_all(fd); ++round) {
        pollfd ready{fd, POLLIN, 0};
        if (::poll(&ready, 1, 100) != 1) continue;  // the event is on its way
        uffd_msg msgs[16];
        const ssize_t n = ::read(fd, msgs, sizeof msgs);
        for (ssize_t i = 0; i < n / static_cast<ssize_t>(sizeof(uffd_msg)); ++i)
            if (msgs[i].event == UFFD_EVENT_FORK) {
                const util::UniqueFd grandchild(static_cast<int>(msgs[i].arg.fork.ufd));
                (void)poison_all(grandchild.get());
            }
    }
    for (const auto& [start, length] : ranges) util::uffd_wake(fd, start, length);
}

}  // namespace pagerd::daemon
