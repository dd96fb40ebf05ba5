// pagerd-test-child: client scenarios that tests run as a program of their own, with
// run_command(), where they used to run in a forked child of the test process.
//
// A test process that holds a connection runs libclient's monitor thread, and so may the
// test itself (writers, a fake daemon). A child forked from it must not start a thread:
// ThreadSanitizer kills such a child ("starting new threads after multi-threaded fork is
// not supported"), and a connection of the child's own starts one. A program started with
// fork + exec is a fresh process, checked by ThreadSanitizer like any other.
//
//   pagerd-test-child regions-as-nobody SOCKET FILE
//       as uid/gid 65534: connects, maps 64 KiB of FILE, lists the regions it may see;
//       exit 0 when that is its own region only.
//   pagerd-test-child fork-as-nobody SOCKET FILE
//       as uid/gid 65534 (no CAP_SYS_PTRACE, so no UFFD_FEATURE_EVENT_FORK): maps 64 KiB
//       of FILE, forks; exit 0 when the child gets SIGSEGV touching it (the region is
//       MADV_DONTFORK: never zeros) and the parent still reads it.
//   pagerd-test-child sigbus-past-eof SOCKET FILE
//       maps the first 100 KiB of FILE, truncates FILE to 4 KiB, touches offset 50000:
//       exit 50 when SIGBUS comes at that address with mmap's si_code for a page past
//       EOF, 51 for another SIGBUS.
//   pagerd-test-child umap-fails SOCKET FILE SIZE ERRNO [TEXT]
//       umap() of SIZE bytes of FILE through the daemon at SOCKET must fail with ERRNO
//       (a number), and pagerd_umap_last_error() contain TEXT; exit 0 when it does.
//   pagerd-test-child umap-fork SOCKET FILE SIZE
//       a UMap user that forks: its child gets a connection of its own; exit 0 when
//       both see FILE's bytes and neither disturbs the other.
//
// Other failures: a message on stderr and an exit status from 2 to 19.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "pagerd/client.hpp"
#include "umap/umap.h"

#if defined(__SANITIZE_THREAD__)
// umap-fork is the one scenario that must fork after threads started: a UMap user always
// has a connection, so a monitor thread, and the test is about what its forked child does
// with its own connection, which starts another. ThreadSanitizer cannot follow such a
// child: it ignores every access there, then dies when it starts a thread unless told
// otherwise. Told here, for this program only: the child runs, unchecked (nothing of the
// test process is in it), and the parent, the UMap user, is checked as everywhere else.
// TSAN_OPTIONS may still override it.
extern "C" const char* __tsan_default_options() { return "die_after_fork=0"; }
#endif

namespace {

using namespace pagerd;
using libclient::Access;

#define CHECK_OR_EXIT(cond, code)                                                                          \
    do {                                                                                                  \
        if (!(cond)) {                                                                                    \
            std::fprintf(stderr, "pagerd-test-child: %s:%d: %s failed (errno %d %s)\n", __FILE__, __LINE__, \
                         #cond, errno, std::strerror(errno));                                             \
            return code;                                                                                  \
        }                                                                                                 \
    } while (0)

int regions_as_nobody(const std::string& socket, const std::string& file)
{
    CHECK_OR_EXIT(::setgid(65534) == 0 && ::setuid(65534) == 0, 3);
    auto c = libclient::Connection::connect({socket, "nobody"});
    if (!c) {
        std::fprintf(stderr, "pagerd-test-child: connect: %s\n", c.error().message.c_str());
        return 4;
    }
    auto r = c.value()->map_file(file, {0, 65536, Access::ReadOnly});
    if (!r) {
        std::fprintf(stderr, "pagerd-test-child: map: %s\n", r.error().message.c_str());
        return 5;
    }
    auto list = c.value()->regions();
    CHECK_OR_EXIT(list && list->size() == 1, 6);
    CHECK_OR_EXIT((*list)[0].pid == static_cast<std::uint32_t>(::getpid()), 7);
    return 0;
}

int fork_as_nobody(const std::string& socket, const std::string& file)
{
    CHECK_OR_EXIT(::setgid(65534) == 0 && ::setuid(65534) == 0, 3);
    auto c = libclient::Connection::connect({socket, "nobody"});
    CHECK_OR_EXIT(c, 4);
    auto r = c.value()->map_file(file, {0, 65536, Access::ReadOnly});
    CHECK_OR_EXIT(r, 5);
    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
    const std::uint8_t first = p[0];
    const pid_t pid = ::fork();
    CHECK_OR_EXIT(pid >= 0, 6);
    if (pid == 0) {
        // A handler of our own (a sanitizer's would report the fault and exit otherwise).
        struct sigaction sa{};
        sa.sa_handler = [](int) { _exit(77); };
        ::sigaction(SIGSEGV, &sa, nullptr);
        _exit(p[4096] + 100);  // must not get here
    }
    int st = 0;
    CHECK_OR_EXIT(::waitpid(pid, &st, 0) == pid, 7);
    CHECK_OR_EXIT(WIFEXITED(st) && WEXITSTATUS(st) == 77, 8);  // SIGSEGV in the child
    CHECK_OR_EXIT(p[0] == first, 9);
    return 0;
}

void* volatile g_expected_addr = nullptr;

void on_sigbus(int, siginfo_t* si, void*)
{
    _exit(si->si_addr == g_expected_addr && (si->si_code == BUS_ADRERR || si->si_code == BUS_MCEERR_AR) ? 50 : 51);
}

int sigbus_past_eof(const std::string& socket, const std::string& file)
{
    auto c = libclient::Connection::connect({socket, "child"});
    CHECK_OR_EXIT(c, 3);
    auto m = c.value()->map_file(file, {0, 102400, Access::ReadOnly});
    CHECK_OR_EXIT(m, 4);
    const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
    CHECK_OR_EXIT(fd >= 0 && ::ftruncate(fd, 4096) == 0, 5);
    g_expected_addr = static_cast<std::uint8_t*>(m->addr) + 50000;
    struct sigaction sa{};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &sa, nullptr);
    return static_cast<const volatile std::uint8_t*>(m->addr)[50000] + 10;  // 10..265: no SIGBUS
}

int umap_fails(const std::string& file, std::uint64_t size, int want_errno, const char* text)
{
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    CHECK_OR_EXIT(fd >= 0, 2);
    errno = 0;
    void* p = umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0);
    const int err = errno;
    if (p != UMAP_FAILED || err != want_errno) {
        std::fprintf(stderr, "pagerd-test-child: umap gave %s, errno %d (%s), instead of errno %d; %s\n",
                     p == UMAP_FAILED ? "UMAP_FAILED" : "a region", err, std::strerror(err), want_errno,
                     pagerd_umap_last_error());
        return 3;
    }
    if (text && !std::strstr(pagerd_umap_last_error(), text)) {
        std::fprintf(stderr, "pagerd-test-child: '%s' does not say '%s'\n", pagerd_umap_last_error(), text);
        return 4;
    }
    return 0;
}

int umap_fork(const std::string& file, std::uint64_t size)
{
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    CHECK_OR_EXIT(fd >= 0, 2);
    std::vector<std::uint8_t> expect(size);
    CHECK_OR_EXIT(::pread(fd, expect.data(), size, 0) == static_cast<ssize_t>(size), 2);
    auto* p = static_cast<const std::uint8_t*>(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0));
    CHECK_OR_EXIT(p != UMAP_FAILED, 3);
    CHECK_OR_EXIT(p[100] == expect[100], 4);
    const pid_t pid = ::fork();
    CHECK_OR_EXIT(pid >= 0, 5);
    if (pid == 0) {
        // The parent's region is here, served by the daemon (fork.md); umap makes a new one.
        if (std::memcmp(p, expect.data(), size) != 0) _exit(15);
        auto* q = static_cast<const std::uint8_t*>(umap(nullptr, size, PROT_READ, UMAP_PRIVATE, fd, 0));
        if (q == UMAP_FAILED || std::memcmp(q, expect.data(), size) != 0) _exit(12);
        if (uunmap(const_cast<std::uint8_t*>(q), size) != 0) _exit(13);
        errno = 0;
        if (uunmap(const_cast<std::uint8_t*>(p), size) != -1 || errno != EINVAL) _exit(14);  // the parent's
        _exit(0);
    }
    int wst = 0;
    CHECK_OR_EXIT(::waitpid(pid, &wst, 0) == pid, 6);
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
        std::fprintf(stderr, "pagerd-test-child: the forked child ended with wait status %d\n", wst);
        return 7;
    }
    // The parent's connection is untouched by the child.
    CHECK_OR_EXIT(std::memcmp(p, expect.data(), size) == 0, 8);
    CHECK_OR_EXIT(uunmap(const_cast<std::uint8_t*>(p), size) == 0, 9);
    return 0;
}

}  // namespace

int main(int argc, char** argv)
{
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 3 && a[0] == "regions-as-nobody") return regions_as_nobody(a[1], a[2]);
    if (a.size() == 3 && a[0] == "sigbus-past-eof") return sigbus_past_eof(a[1], a[2]);
    if (a.size() == 3 && a[0] == "fork-as-nobody") return fork_as_nobody(a[1], a[2]);
    if ((a.size() == 5 || a.size() == 6) && a[0] == "umap-fails") {
        ::setenv("PAGERD_SOCKET", a[1].c_str(), 1);
        return umap_fails(a[2], std::stoull(a[3]), std::stoi(a[4]), a.size() == 6 ? a[5].c_str() : nullptr);
    }
    if (a.size() == 4 && a[0] == "umap-fork") {
        ::setenv("PAGERD_SOCKET", a[1].c_str(), 1);
        return umap_fork(a[2], std::stoull(a[3]));
    }
    std::fprintf(stderr, "usage: pagerd-test-child regions-as-nobody|sigbus-past-eof|umap-fails|umap-fork ...\n");
    return 2;
}
