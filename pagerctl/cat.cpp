// pagerctl cat: map a file through pagerd, touch every page in the chosen order from N
// threads, then write the bytes of the range to stdout in file order.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::pagerctl {
namespace {

std::vector<std::size_t> page_order(std::size_t pages, bool random)
{
    std::vector<std::size_t> order(pages);
    std::iota(order.begin(), order.end(), 0);
    if (random) std::shuffle(order.begin(), order.end(), std::mt19937_64(0x9e3779b97f4a7c15ull));
    return order;
}

int write_all(const char* p, std::size_t n)
{
    while (n) {
        const ssize_t w = ::write(STDOUT_FILENO, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return report(Error::system(errno, std::string("writing to stdout: ") + std::strerror(errno)));
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return 0;
}

}  // namespace

int run_cat(const std::string& socket, const CatOptions& o)
{
    util::UniqueFd fd(::open(o.file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return report(Error::system(errno, "cannot open " + o.file + ": " + std::strerror(errno)));
    struct stat st{};
    ::fstat(fd.get(), &st);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (o.offset > size) return report(Error::system(EINVAL, "offset is past the end of the file"));
    const std::uint64_t length = o.length ? std::min(o.length, size - o.offset) : size - o.offset;
    if (length == 0) return 0;
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t map_offset = o.offset / page * page;
    const std::uint64_t skip = o.offset - map_offset;
    const std::uint64_t map_length = (skip + length + page - 1) / page * page;

    auto conn = libclient::Connection::connect({socket, "pagerctl"});
    if (!conn) return report(conn.error());
    libclient::MapOptions mo{map_offset, map_length, libclient::Access::ReadOnly};
    mo.prefetch = o.prefetch;
    auto region = conn.value()->map_fd(fd.get(), mo);
    if (!region) return report(region.error());
    const auto* base = static_cast<const volatile char*>(region->addr);

    const auto order = page_order(map_length / page, o.random);
    const unsigned threads = std::max(1u, o.threads);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (std::size_t i = t; i < order.size(); i += threads) (void)base[order[i] * page];
        });
    for (auto& th : pool) th.join();

    const int rc = write_all(static_cast<const char*>(region->addr) + skip, length);
    auto unmapped = conn.value()->unmap(region.value());
    if (rc == 0 && !unmapped) return report(unmapped.error());
    return rc;
}

}  // namespace pagerd::pagerctl
