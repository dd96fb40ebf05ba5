// The benchmarked file: creating the temporary one, and putting its pages into the page
// cache (hot) or out of it (cold).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

Error sys_error(const std::string& what)
{
    const int e = errno;
    return Error::system(e, what + ": " + std::strerror(e));
}

std::uint64_t splitmix64(std::uint64_t& state)
{
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

Result<void> write_all(int fd, const unsigned char* p, std::size_t n)
{
    while (n) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return sys_error("writing the temporary file");
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return {};
}

}  // namespace

Result<BenchFile> open_file(const std::string& path)
{
    BenchFile f;
    f.fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!f.fd) return sys_error("cannot open " + path);
    struct stat st{};
    if (::fstat(f.fd.get(), &st) != 0) return sys_error("cannot stat " + path);
    if (!S_ISREG(st.st_mode)) return Error::system(EINVAL, path + " is not a regular file");
    f.bytes = static_cast<std::uint64_t>(st.st_size) / k_page * k_page;
    if (f.bytes == 0) return Error::system(EINVAL, path + " is smaller than one 4 KiB page");
    f.path = path;
    return f;
}

Result<BenchFile> create_temp_file(const std::string& dir, std::uint64_t bytes)
{
    BenchFile f;
    f.bytes = bytes / k_page * k_page;
    if (f.bytes == 0) return Error::system(EINVAL, "--size is smaller than one 4 KiB page");
    std::string name = dir + "/pagerd-bench.XXXXXX";
    f.fd.reset(::mkostemp(name.data(), O_CLOEXEC));
    if (!f.fd) return sys_error("cannot create a file in " + dir);
    ::unlink(name.c_str());  // gone once the descriptor closes, however the run ends
    f.path = name + " (temporary, already unlinked)";
    f.temporary = true;

    std::vector<unsigned char> buf(1u << 20);
    std::uint64_t state = 0x5eed5eed5eed5eedull;
    for (std::uint64_t done = 0; done < f.bytes; done += buf.size()) {
        for (std::size_t i = 0; i < buf.size(); i += 8) {
            std::uint64_t r = splitmix64(state);
            for (std::size_t b = 0; b < 8; ++b, r >>= 8) {
                const auto c = static_cast<unsigned char>(r);
                buf[i + b] = c ? c : 0x5a;  // never zero: a page of zeros would pass unnoticed
            }
        }
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), f.bytes - done));
        if (auto w = write_all(f.fd.get(), buf.data(), n); !w) return w.error();
    }
    if (::fdatasync(f.fd.get()) != 0) return sys_error("fdatasync of the temporary file");
    return f;
}

Result<void> make_hot(int fd, std::uint64_t bytes)
{
    std::vector<unsigned char> buf(1u << 20);
    for (std::uint64_t off = 0; off < bytes;) {
        const ssize_t r = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return sys_error("reading the file into the page cache");
        if (r == 0) break;
        off += static_cast<std::uint64_t>(r);
    }
    return {};
}

Result<void> make_cold(int fd, std::uint64_t bytes)
{
    if (::fdatasync(fd) != 0 && errno != EINVAL && errno != EROFS)
        return sys_error("fdatasync before dropping the cache");
    if (const int e = ::posix_fadvise(fd, 0, static_cast<off_t>(bytes), POSIX_FADV_DONTNEED); e != 0)
        return Error::system(e, std::string("posix_fadvise(POSIX_FADV_DONTNEED): ") + std::strerror(e));
    const int dc = ::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
    if (dc >= 0) {
        [[maybe_unused]] const ssize_t w = ::write(dc, "1", 1);  // best effort
        ::close(dc);
    }
    return {};
}

double resident_fraction(int fd, std::uint64_t bytes)
{
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return -1;
    std::vector<unsigned char> vec(bytes / k_page);
    double fraction = -1;
    if (::mincore(p, bytes, vec.data()) == 0) {
        std::uint64_t resident = 0;
        for (const unsigned char v : vec) resident += v & 1;
        fraction = vec.empty() ? 0 : static_cast<double>(resident) / static_cast<double>(vec.size());
    }
    ::munmap(p, bytes);
    return fraction;
}

ColdProbe probe_cold(int fd, std::uint64_t bytes)
{
    ColdProbe probe;
    const bool drop_caches = ::access("/proc/sys/vm/drop_caches", W_OK) == 0;
    const std::string how = drop_caches ? "fadvise(DONTNEED) + drop_caches" : "fadvise(DONTNEED) only, drop_caches not writable";
    if (auto hot = make_hot(fd, bytes); !hot) {
        probe.note = hot.error().message;
        return probe;
    }
    if (auto cold = make_cold(fd, bytes); !cold) {
        probe.note = "cannot drop the cache: " + cold.error().message;
        return probe;
    }
    const double left = resident_fraction(fd, bytes);
    if (left < 0) {
        probe.possible = true;
        probe.note = how + "; unverified (mincore failed)";
    } else {
        probe.possible = left < 0.05;
        probe.note = how + "; " + std::to_string(static_cast<int>(left * 100 + 0.5)) +
                     "% of the file still cached after dropping";
    }
    return probe;
}

}  // namespace pagerd::bench
