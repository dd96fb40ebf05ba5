// --cases second-copy: what a load into the daemon's own cache costs with each way of not
// keeping the kernel's second copy of the bytes, against a plain buffered read and the
// kernel's mmap, in 256 KiB blocks (the daemon's staging buffer), in this process, one
// thread, no daemon. See the footer in main.cpp.
#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <unordered_set>

#include "bench.hpp"

#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080  // uncached buffered I/O, Linux 6.14 (not in older headers)
#endif

namespace pagerd::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t k_seed = 0x5ec0dc0b1e5eedull;

Error sys_error(int e, const std::string& what) { return Error::system(e, what + ": " + std::strerror(e)); }

double cpu_seconds()  // the whole process: io_uring's workers are threads of it
{
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// One block at `off` into buf with method m; false with errno set on an error.
bool read_block(SecondCopyMethod m, int fd, int dfd, unsigned char* buf, std::uint64_t off)
{
    std::uint64_t done = 0;
    while (done < k_second_copy_block) {
        const auto o = static_cast<off_t>(off + done);
        const std::size_t n = k_second_copy_block - done;
        ssize_t r;
        if (m == SecondCopyMethod::Direct) {
            r = ::pread(dfd, buf + done, n, o);
        } else if (m == SecondCopyMethod::Dontcache) {
            iovec iov{buf + done, n};
            r = ::preadv2(fd, &iov, 1, o, RWF_DONTCACHE);
        } else {
            r = ::pread(fd, buf + done, n, o);
        }
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = ENODATA;
            return false;
        }
        done += static_cast<std::uint64_t>(r);
    }
    if (m == SecondCopyMethod::Fadvise)
        if (const int e = ::posix_fadvise(fd, static_cast<off_t>(off), k_second_copy_block, POSIX_FADV_DONTNEED)) {
            errno = e;
            return false;
        }
    return true;
}

std::uint64_t sum_block(const unsigned char* buf)  // one word per 4 KiB page: the same bytes on every side
{
    std::uint64_t s = 0;
    for (std::uint64_t i = 0; i < k_second_copy_block; i += k_page) {
        std::uint64_t w;
        std::memcpy(&w, buf + i, sizeof w);
        s += w;
    }
    return s;
}

struct Sample {
    double seconds = 0, cpu = 0;
    std::uint64_t checksum = 0;
};

// The blocks at `offs` through io_uring, k_second_copy_depth reads in flight, each into a
// buffer of its own: O_DIRECT (dfd) or buffered with RWF_DONTCACHE (fd). Adds to s.checksum.
Result<void> ring_reads(int fd, std::uint64_t rw_flags, const std::vector<std::uint64_t>& offs, Sample& s)
{
    io_uring ring{};
    if (const int e = ::io_uring_queue_init(k_second_copy_depth, &ring, 0); e < 0)
        return sys_error(-e, "io_uring_queue_init");
    struct Slot {
        unsigned char* buf = nullptr;
        std::uint64_t off = 0, done = 0;
    };
    std::vector<Slot> slots(k_second_copy_depth);
    for (auto& sl : slots) sl.buf = static_cast<unsigned char*>(std::aligned_alloc(k_page, k_second_copy_block));
    auto submit = [&](std::size_t i) {
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring);
        ::io_uring_prep_read(sqe, fd, slots[i].buf + slots[i].done,
                             static_cast<unsigned>(k_second_copy_block - slots[i].done), slots[i].off + slots[i].done);
        sqe->rw_flags = static_cast<__kernel_rwf_t>(rw_flags);
        ::io_uring_sqe_set_data64(sqe, i);
    };
    std::size_t next = 0;
    unsigned inflight = 0;
    auto start_next = [&](std::size_t i) {
        if (next >= offs.size()) return;
        slots[i].off = offs[next++];
        slots[i].done = 0;
        submit(i);
        ++inflight;
    };
    Result<void> result;
    for (std::size_t i = 0; i < slots.size(); ++i) start_next(i);
    while (result && inflight) {
        if (const int e = ::io_uring_submit_and_wait(&ring, 1); e < 0 && e != -EINTR) {
            result = sys_error(-e, "io_uring_submit_and_wait");
            break;
        }
        io_uring_cqe* cqe = nullptr;
        while (result && ::io_uring_peek_cqe(&ring, &cqe) == 0) {
            const auto i = static_cast<std::size_t>(::io_uring_cqe_get_data64(cqe));
            const int res = cqe->res;
            ::io_uring_cqe_seen(&ring, cqe);
            if (res <= 0 && res != -EAGAIN && res != -EINTR) {
                result = sys_error(res < 0 ? -res : ENODATA, "io_uring read at " + std::to_string(slots[i].off));
                break;
            }
            if (res > 0) slots[i].done += static_cast<std::uint64_t>(res);
            if (slots[i].done < k_second_copy_block) {
                submit(i);
                continue;
            }
            s.checksum += sum_block(slots[i].buf);
            --inflight;
            start_next(i);
        }
    }
    ::io_uring_queue_exit(&ring);
    for (auto& sl : slots) std::free(sl.buf);
    return result;
}

Result<Sample> measure(SecondCopyMethod m, int fd, int dfd, std::uint64_t bytes, const std::vector<std::uint64_t>& offs,
                       unsigned char* buf)
{
    const unsigned char* map = nullptr;
    if (m == SecondCopyMethod::Mmap) {
        void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return sys_error(errno, "mmap of the file");
        map = static_cast<const unsigned char*>(p);
    }
    Sample s;
    const double cpu0 = cpu_seconds();
    const auto t0 = Clock::now();
    int err = 0;
    Result<void> ring;
    if (m == SecondCopyMethod::DirectRing) ring = ring_reads(dfd, 0, offs, s);
    if (m == SecondCopyMethod::DontcacheRing) ring = ring_reads(fd, RWF_DONTCACHE, offs, s);
    const bool sync = m != SecondCopyMethod::DirectRing && m != SecondCopyMethod::DontcacheRing;
    for (std::size_t k = 0; sync && k < offs.size(); ++k) {
        const std::uint64_t off = offs[k];
        if (map) {
            std::memcpy(buf, map + off, k_second_copy_block);
        } else if (!read_block(m, fd, dfd, buf, off)) {
            err = errno;
            break;
        }
        s.checksum += sum_block(buf);
    }
    s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    s.cpu = cpu_seconds() - cpu0;
    if (map) ::munmap(const_cast<unsigned char*>(map), bytes);
    if (!ring) return ring.error();
    if (err) return sys_error(err, std::string(second_copy_method_name(m)));
    return s;
}

// The file system's name: the mount's type from /proc/self/mountinfo (by st_dev), else
// from statfs' f_type; with f_type in hex.
std::string fs_name(int fd)
{
    struct statfs sf{};
    if (::fstatfs(fd, &sf) != 0) return "unknown (fstatfs failed)";
    char hex[32];
    std::snprintf(hex, sizeof hex, "f_type 0x%llx", static_cast<unsigned long long>(sf.f_type));
    std::string name;
    struct stat st{};
    if (::fstat(fd, &st) == 0) {
        std::ifstream in("/proc/self/mountinfo");
        const std::string dev = std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
        for (std::string line; std::getline(in, line);) {
            std::istringstream f(line);
            std::string id, parent, mm, word;
            f >> id >> parent >> mm;
            if (mm != dev) continue;
            while (f >> word && word != "-") {}
            f >> name;
            break;
        }
    }
    if (name.empty()) {
        switch (static_cast<unsigned long>(sf.f_type)) {
        case 0xef53: name = "ext2/3/4"; break;
        case 0x58465342: name = "xfs"; break;
        case 0x9123683e: name = "btrfs"; break;
        case 0x01021994: name = "tmpfs"; break;
        case 0x794c7630: name = "overlayfs"; break;
        case 0xf2f52010: name = "f2fs"; break;
        case 0xca451a4e: name = "bcachefs"; break;
        case 0x65735546: name = "fuse"; break;
        default: name = "unknown";
        }
    }
    return name + " (" + hex + ")";
}

std::string dio_alignment(int fd)
{
#ifdef STATX_DIOALIGN
    struct statx sx{};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN))
        return "statx DIOALIGN: memory " + std::to_string(sx.stx_dio_mem_align) + " B, offset " +
               std::to_string(sx.stx_dio_offset_align) + " B";
#endif
    return "statx DIOALIGN not reported";
}

std::string read_line(const char* path)
{
    std::ifstream in(path);
    std::string s;
    std::getline(in, s);
    return s;
}

}  // namespace

const char* second_copy_method_name(SecondCopyMethod m)
{
    switch (m) {
    case SecondCopyMethod::Fadvise: return "pread+FADV_DONTNEED";
    case SecondCopyMethod::Direct: return "O_DIRECT pread";
    case SecondCopyMethod::Dontcache: return "RWF_DONTCACHE";
    case SecondCopyMethod::Buffered: return "pread (buffered)";
    case SecondCopyMethod::Mmap: return "mmap+memcpy";
    case SecondCopyMethod::DirectRing: return "O_DIRECT io_uring x8";
    case SecondCopyMethod::DontcacheRing: return "RWF_DONTCACHE io_uring x8";
    }
    return "?";
}

SecondCopyRun run_second_copy(const SecondCopySetup& s)
{
    using M = SecondCopyMethod;
    SecondCopyRun run;
    run.runs = s.runs;
    run.load = read_line("/proc/loadavg");
    run.fs = fs_name(s.fd);
    run.dio_align = dio_alignment(s.fd);
    const std::uint64_t blocks = s.bytes / k_second_copy_block;
    run.bytes = blocks * k_second_copy_block;
    const bool drop_caches = ::access("/proc/sys/vm/drop_caches", W_OK) == 0;
    run.drop = drop_caches ? "fdatasync, posix_fadvise(DONTNEED) over the file, echo 1 > /proc/sys/vm/drop_caches"
                           : "fdatasync, posix_fadvise(DONTNEED) over the file (drop_caches not writable)";
    if (blocks == 0) {
        s.error("second-copy: the file is smaller than one 256 KiB block");
        return run;
    }
    // The O_DIRECT descriptor: the same file opened anew (it may be unlinked already).
    util::UniqueFd dfd(::open(("/proc/self/fd/" + std::to_string(s.fd)).c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    const std::string direct_refused = dfd ? "" : std::string("open(O_DIRECT) failed: ") + std::strerror(errno);
    std::unique_ptr<unsigned char, decltype(&std::free)> buf(
        static_cast<unsigned char*>(std::aligned_alloc(k_page, k_second_copy_block)), &std::free);
    // Does the kernel and this file system take RWF_DONTCACHE?
    {
        iovec iov{buf.get(), k_second_copy_block};
        if (::preadv2(s.fd, &iov, 1, 0, RWF_DONTCACHE) < 0) {
            const int e = errno;
            run.dontcache = std::string("REFUSED: preadv2(RWF_DONTCACHE) failed with ") +
                            (e == EOPNOTSUPP ? "EOPNOTSUPP" : e == EINVAL ? "EINVAL" : std::to_string(e)) + " (" +
                            std::strerror(e) + ") on " + run.fs;
        } else {
            run.dontcache = "accepted by the kernel on " + run.fs;
        }
    }
    const bool dontcache_ok = run.dontcache.rfind("accepted", 0) == 0;

    std::vector<std::uint64_t> seq(blocks), rnd(s.random_blocks), perm;
    for (std::uint64_t b = 0; b < blocks; ++b) seq[b] = b * k_second_copy_block;
    std::mt19937_64 prng(k_seed);
    std::unordered_set<std::uint64_t> distinct;
    for (auto& o : rnd) {
        o = (prng() % blocks) * k_second_copy_block;
        distinct.insert(o);
    }
    perm = seq;
    std::shuffle(perm.begin(), perm.end(), prng);
    run.random_blocks = rnd.size();
    run.distinct_blocks = distinct.size();

    auto offsets = [&](const std::string& pattern) -> const std::vector<std::uint64_t>& {
        return pattern == "rand" ? rnd : pattern == "perm" ? perm : seq;
    };
    for (const char* pattern : {"seq", "perm", "rand"})
        for (const bool hot : {false, true})
            for (const M m : {M::Mmap, M::Fadvise, M::Direct, M::Dontcache, M::Buffered, M::DirectRing,
                              M::DontcacheRing}) {
                SecondCopyRow r;
                r.pattern = pattern;
                r.hot = hot;
                r.method = m;
                r.bytes = offsets(pattern).size() * k_second_copy_block;
                if ((m == M::Dontcache || m == M::DontcacheRing) && !dontcache_ok) r.skipped = run.dontcache;
                if ((m == M::Direct || m == M::DirectRing) && !dfd) r.skipped = direct_refused;
                run.rows.push_back(r);
            }
    // Runs outside, rows inside: a slow spell of the shared machine hits every method alike.
    for (unsigned rep = 0; rep < s.runs; ++rep)
        for (auto& r : run.rows) {
            if (!r.skipped.empty() || !r.failure.empty()) continue;
            if (s.progress)
                std::fprintf(stderr, "second-copy run %u/%u: %s %s %s\n", rep + 1, s.runs, r.pattern.c_str(),
                             r.hot ? "hot" : "cold", second_copy_method_name(r.method));
            auto prep = r.hot ? make_hot(s.fd, s.bytes) : make_cold(s.fd, s.bytes);
            if (!prep) {
                r.failure = prep.error().message;
                s.error("second-copy: " + r.failure);
                continue;
            }
            r.resident_before.push_back(resident_fraction(s.fd, run.bytes) * static_cast<double>(run.bytes));
            auto m = measure(r.method, s.fd, dfd.get(), run.bytes, offsets(r.pattern), buf.get());
            if (!m) {
                r.failure = m.error().message;
                s.error("second-copy " + std::string(second_copy_method_name(r.method)) + ": " + r.failure);
                continue;
            }
            r.resident_after.push_back(resident_fraction(s.fd, run.bytes) * static_cast<double>(run.bytes));
            r.seconds.push_back(m->seconds);
            r.cpu_seconds.push_back(m->cpu);
            // perm reads every block once, as seq does: the same sum.
            std::uint64_t& sum = r.pattern == "rand" ? run.rand_checksum : run.seq_checksum;
            if (sum == 0) {
                sum = m->checksum;
            } else if (sum != m->checksum) {
                r.failure = "the bytes read differ from the other methods' (checksum)";
                s.error("second-copy " + std::string(second_copy_method_name(r.method)) + ": " + r.failure);
            }
        }
    return run;
}

}  // namespace pagerd::bench
