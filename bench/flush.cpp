// Flush throughput: Connection::flush of a Shared region whose every page is dirty,
// against pwrite + fdatasync of the same pages to the same file.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

using libclient::Tracking;
using Clock = std::chrono::steady_clock;

Error sys_error(const std::string& what)
{
    const int e = errno;
    return Error::system(e, what + ": " + std::strerror(e));
}

Result<void> pwrite_all(int fd, const unsigned char* p, std::uint64_t n, std::uint64_t off)
{
    while (n) {
        const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return sys_error("pwrite");
        p += w;
        n -= static_cast<std::uint64_t>(w);
        off += static_cast<std::uint64_t>(w);
    }
    return {};
}

Result<void> datasync(int fd)
{
    if (::fdatasync(fd) != 0) return sys_error("fdatasync");
    return {};
}

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// `buf` holds the file's first pages; one byte per page changes, then, timed: one pwrite
// per 4 KiB page (per_page) or one pwrite of everything, and fdatasync.
Result<double> pwrite_case(int fd, std::vector<unsigned char>& buf, std::uint64_t pages, bool per_page)
{
    const unsigned salt = next_salt();
    for (std::uint64_t i = 0; i < pages; ++i) {
        const auto p = static_cast<std::uint32_t>(i);
        buf[write_offset(p)] = write_value(p, salt);
    }
    if (auto s = datasync(fd); !s) return s.error();  // nothing else left to write back
    const auto t0 = Clock::now();
    if (per_page) {
        for (std::uint64_t p = 0; p < pages; ++p)
            if (auto w = pwrite_all(fd, buf.data() + p * k_page, k_page, p * k_page); !w) return w.error();
    } else if (auto w = pwrite_all(fd, buf.data(), pages * k_page, 0); !w) {
        return w.error();
    }
    if (auto s = datasync(fd); !s) return s.error();
    const double seconds = since(t0);
    if (const std::string bad = check_written(fd, buf.data(), pages, salt); !bad.empty())
        return Error::system(EBADMSG, "after pwrite + fdatasync the file differs: " + bad);
    return seconds;
}

// A fresh Shared region; every page written once (not timed); then, timed,
// Connection::flush; the file must then hold the region's bytes.
Result<double> flush_case(libclient::Connection& conn, int fd, std::uint64_t pages, Tracking tracking,
                          std::uint64_t& written)
{
    libclient::MapOptions mo{0, pages * k_page, libclient::Access::Shared};
    mo.tracking = tracking;
    auto region = conn.map_fd(fd, mo);
    if (!region) return Error{region.error().domain, region.error().code, "map_fd: " + region.error().message};
    const unsigned salt = next_salt();
    timed_writes(region->addr, pages, 1, salt);
    Result<double> result = 0.0;
    if (auto s = datasync(fd); !s) result = s.error();
    if (result) {
        const auto t0 = Clock::now();
        auto f = conn.flush(region.value());
        const double seconds = since(t0);
        if (!f) {
            result = Error{f.error().domain, f.error().code, "flush: " + f.error().message};
        } else if (written = f->pages; f->pages < pages) {
            result = Error::system(EBADMSG, "flush wrote " + std::to_string(f->pages) + " pages, " + std::to_string(pages) +
                                                " were dirty");
        } else if (const std::string bad = check_written(fd, region->addr, pages, salt); !bad.empty()) {
            result = Error::system(EBADMSG, "after flush the file does not hold the written bytes: " + bad);
        } else {
            result = seconds;
        }
    }
    if (auto u = conn.unmap(region.value()); !u && result)
        result = Error{u.error().domain, u.error().code, "unmap: " + u.error().message};
    return result;
}

}  // namespace

std::vector<FlushCase> run_flush_cases(libclient::Connection& conn, const WriteSetup& s)
{
    std::vector<FlushCase> out;
    auto run = [&](FlushCase c, const auto& measure) {
        if (s.progress) std::fprintf(stderr, "[flush] %s\n", c.name.c_str());
        std::vector<double> times;
        for (unsigned rep = 0; rep < s.repeat; ++rep) {
            Result<double> r = measure(c);
            if (!r) {
                if (r.error().code == ENOTSUP)
                    c.note = r.error().message;  // the kernel lacks it: skipped, not an error
                else
                    s.error("flush " + c.name + ": " + r.error().message);
                times.clear();
                break;
            }
            times.push_back(r.value());
        }
        c.seconds = median_of(times);
        out.push_back(c);
    };

    std::vector<unsigned char> buf(s.pages * k_page);
    for (std::uint64_t off = 0; off < buf.size();) {
        const ssize_t r = ::pread(s.fd, buf.data() + off, buf.size() - off, static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            s.error("flush: reading the file: " + std::string(r ? std::strerror(errno) : "end of file"));
            return out;
        }
        off += static_cast<std::uint64_t>(r);
    }
    for (const bool per_page : {true, false})
        run({per_page ? "pwrite-4k" : "pwrite-big", "", s.pages, s.pages}, [&](FlushCase&) {
            return pwrite_case(s.fd, buf, s.pages, per_page);
        });
    buf = {};

    for (const Tracking tr : {Tracking::UffdWp, Tracking::Sigsegv, Tracking::Async}) {
        const std::string name = libclient::tracking_name(tr);
        if (!conn.daemon_alive()) {
            s.error("flush " + name + ": the connection to pagerd was lost");
            out.push_back({"flush-" + name, name, s.pages});
            continue;
        }
        run({"flush-" + name, name, s.pages}, [&](FlushCase& c) {
            return flush_case(conn, s.fd, s.pages, tr, c.written_pages);
        });
    }
    return out;
}

}  // namespace pagerd::bench
