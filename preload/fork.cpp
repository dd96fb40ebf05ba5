// fork() without the kernel's fork events (a client without CAP_SYS_PTRACE: libclient's
// Connection::fork_inherits() is false): libclient marks every region MADV_DONTFORK, so a
// child would find no memory where its parent's file mappings were, where the same program
// without pagerd finds the file. In the child, before fork() returns there, each taken
// range is mapped again at its address: a region of a connection of the child's over the
// same part of the same file (ReadOnly and Shared regions come back exact: a Shared one is
// in the daemon's page cache, shared with the parent), else the kernel's mapping of the
// file. PrivateWritable mappings are never taken then (map.cpp): their writes would be lost.
#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine.hpp"
#include "process.hpp"
#include "real.hpp"
#include "table.hpp"

namespace pagerd::preload {
namespace {

using libclient::Access;
using libclient::Connection;

// The pieces to map again: those of regions whose connection the child did not inherit.
bool wanted(int i) noexcept
{
    const TakenRegion& t = region(piece(i).region);
    return t.used && t.conn && !t.conn->fork_inherits();
}

void say_piece(const TakenRegion& t, const char* what, const char* reason) noexcept
{
    char path[512];
    fd_path(t.fd, path, sizeof path);
    say(path, what, reason);
}

// The kernel's mapping of the piece, as the program asked for it. Drops it from the table.
void fall_back(int i, const char* reason) noexcept
{
    const Piece& p = piece(i);
    const TakenRegion& t = region(p.region);
    const auto start = p.start.load(), len = p.end.load() - start;
    void* got = MAP_FAILED;
    if (t.fd >= 0)
        got = real::mmap(as_ptr(start), len, t.prot, t.type | MAP_FIXED, t.fd, static_cast<off_t>(p.offset));
    char why[768];
    if (got == as_ptr(start)) {
        std::snprintf(why, sizeof why, "%s", reason);
        say_piece(t, "in the child: mapped by the kernel", why);
    } else {
        std::snprintf(why, sizeof why, "%s; the kernel's mmap failed too (%s): not in the child", reason,
                      ::strerrorname_np(errno) ? ::strerrorname_np(errno) : "?");
        say_piece(t, "in the child: lost", why);
        real::munmap(as_ptr(start), len);  // our reservation, if libclient left it
    }
    drop_piece_at(i);
}

}  // namespace

void remap_in_child() noexcept
{
    bool pending[k_max_pieces] = {};
    bool any = false;
    for_each_piece(0, UINTPTR_MAX, [&](int i) {
        pending[i] = wanted(i);
        any = any || pending[i];
    });
    if (!any) return;  // root (or nothing taken): the kernel and the daemon gave the child all
    Inside inside;
    // 1. Hold the addresses (the child has nothing there), so that nothing the connection
    //    maps (its thread's stack, malloc's arenas) lands in them before the regions do.
    for_each_piece(0, UINTPTR_MAX, [&](int i) {
        if (!pending[i]) return;
        const auto start = piece(i).start.load(), len = piece(i).end.load() - start;
        void* got = real::mmap(as_ptr(start), len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                               -1, 0);
        if (got == as_ptr(start)) return;
        if (got != MAP_FAILED) real::munmap(got, len);  // a kernel older than MAP_FIXED_NOREPLACE
        pending[i] = false;
        say_piece(region(piece(i).region), "in the child: lost", "something else is mapped at its address");
        drop_piece_at(i);
    });
    // 2. One connection of the child's, one MAP per piece; each region slot is reused by
    //    its first piece, and further pieces (a region cut by munmap) get slots of their own.
    bool renewed[k_max_regions] = {};
    for_each_piece(0, UINTPTR_MAX, [&](int i) {
        if (!pending[i]) return;
        Piece& p = piece(i);
        char why[512];
        Connection* conn = child_connection(why, sizeof why);
        if (!conn) return fall_back(i, why);
        const std::uint32_t ri = p.region;
        const TakenRegion old = region(ri);
        if (renewed[ri] && !has_room()) return fall_back(i, "the library's table is full");
        libclient::MapOptions o;
        o.offset = p.offset;
        o.length = p.end.load() - p.start.load();
        o.access = old.region.access;
        if (o.access == Access::Shared) o.tracking = libclient::Tracking::UffdWp;
        o.addr = as_ptr(p.start.load());
        auto m = conn->map_fd(old.fd, o);
        if (!m) {
            note_failure(conn, m.error());
            return fall_back(i, m.error().message.c_str());
        }
        TakenRegion n = old;
        n.conn = conn;
        n.region = m.value();
        n.intact = true;
        if (!renewed[ri]) {
            region(ri) = n;
            renewed[ri] = true;
        } else {
            n.fd = ::fcntl(old.fd, F_DUPFD_CLOEXEC, 0);
            const int at = adopt_piece(n, i);  // has_room() said there is a slot
            renewed[at] = true;
        }
        say_piece(n, "in the child: mapped again", nullptr);
    });
}

}  // namespace pagerd::preload
