// fork(): a child keeps its parent's regions. The daemon serves the child's faults through
// the child's own userfaultfd (UFFD_FEATURE_EVENT_FORK: the kernel hands it to the daemon),
// so the child needs nothing from this library to read them. What the library must do is
// stop the child from using the parent's connection: the socket is the parent's (a
// request from the child would take the parent's replies), the monitor thread does not
// exist in the child, and regions with memory of their own (Sigsegv and Async tracking)
// are not in the child (MADV_DONTFORK). docs/fork.md has the table of what a child sees.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <new>
#include <set>

#include "connection_impl.hpp"
#include "segv_tracker.hpp"

namespace pagerd::libclient {
namespace {

struct Registry {
    std::mutex mutex;
    std::set<Connection::Impl*> live;
};

Registry& registry()
{
    static Registry* r = new Registry;  // never destroyed: fork() may run during exit
    return *r;
}

// Before fork: no connection changes its region list while the child's copy is made.
void prepare()
{
    registry().mutex.lock();
    for (Connection::Impl* c : registry().live) c->regions_mutex.lock();
}

void parent()
{
    for (Connection::Impl* c : registry().live) c->regions_mutex.unlock();
    registry().mutex.unlock();
}

// In the child, one thread, the one that forked and holds the locks taken above.
void child()
{
    for (Connection::Impl* c : registry().live) {
        c->forked.store(true);
        c->alive.store(false);
        c->sock.reset();        // the parent's: closed here, so that the daemon sees the parent leave
        c->uffd.reset();        // the parent's address space's, useless here
        c->async_uffd.reset();
        c->stop_fd.reset();
        // The monitor thread is not in the child: forget the handle without joining it.
        new (&c->monitor) std::thread();
        for (auto it = c->regions.begin(); it != c->regions.end();) {
            if (it->second.inherited() && (c->uffd_features & UFFD_FEATURE_EVENT_FORK)) {
                ++it;
                continue;
            }
            if (it->second.segv_slot >= 0) segv::forget_in_child(it->second.segv_slot);
            it = c->regions.erase(it);  // MADV_DONTFORK memory: not in the child (keep_from_child)
        }
        c->regions_mutex.unlock();
    }
    registry().mutex.unlock();
}

}  // namespace

void register_fork_handlers()
{
    static std::once_flag once;
    std::call_once(once, [] { ::pthread_atfork(prepare, parent, child); });
}

void Connection::Impl::enlist()
{
    register_fork_handlers();
    std::lock_guard lock(registry().mutex);
    registry().live.insert(this);
}

void Connection::Impl::delist()
{
    std::lock_guard lock(registry().mutex);
    registry().live.erase(this);
}

// The child cannot ask the daemon (the connection is the parent's): it writes the region's
// bytes to the file itself, all of them (it does not know which are dirty), then syncs.
// The pages stay dirty in the daemon's cache and are written again by it later.
Result<FlushResult> Connection::Impl::child_flush(const Mapping& m)
{
    if (m.region.access != Access::Shared) return FlushResult{};
    if (!m.file || !*m.file)
        return Error::system(ENOTSUP, "a forked child can flush a Shared region of a file only");
    const auto* p = static_cast<const char*>(m.region.addr);
    std::size_t done = 0;
    while (done < m.region.size) {
        const ssize_t n = ::pwrite(m.file->get(), p + done, m.region.size - done,
                                   static_cast<off_t>(m.file_offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("writing the region to its file");
        if (n == 0) return Error::system(EIO, "writing the region to its file: wrote nothing");
        done += static_cast<std::size_t>(n);
    }
    if (::fdatasync(m.file->get()) != 0) return sys_error("fdatasync");
    return FlushResult{m.region.size / page_size, m.region.size};
}

}  // namespace pagerd::libclient
