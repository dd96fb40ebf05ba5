// pagerctl write: map FILE shared through pagerd, copy stdin into the region at an
// offset, flush, and print the pages and bytes flushed.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "commands.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::pagerctl {
namespace {

Result<std::vector<char>> read_stdin()
{
    std::vector<char> data;
    char buf[1 << 16];
    for (;;) {
        const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error::system(errno, std::string("reading stdin: ") + std::strerror(errno));
        if (n == 0) return data;
        data.insert(data.end(), buf, buf + n);
    }
}

}  // namespace

Result<libclient::Tracking> parse_tracking(const std::string& name)
{
    using libclient::Tracking;
    for (Tracking t : {Tracking::Auto, Tracking::UffdWp, Tracking::Sigsegv, Tracking::Async})
        if (name == libclient::tracking_name(t)) return t;
    return Error::system(EINVAL, "unknown tracking '" + name + "' (auto, uffd-wp, sigsegv, async)");
}

int run_write(const std::string& socket, const WriteOptions& o)
{
    auto tracking = parse_tracking(o.tracking);
    if (!tracking) return report(tracking.error());
    auto data = read_stdin();
    if (!data) return report(data.error());
    util::UniqueFd fd(::open(o.file.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) return report(Error::system(errno, "cannot open " + o.file + " for writing: " + std::strerror(errno)));
    struct stat st{};
    ::fstat(fd.get(), &st);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (o.offset + data->size() > size)
        return report(Error::system(EINVAL, "writing " + std::to_string(data->size()) + " bytes at offset " +
                                                std::to_string(o.offset) + " would go past the end of " + o.file + " (" +
                                                std::to_string(size) + " bytes); a mapping cannot grow a file"));
    if (data->empty()) {
        std::printf("flushed 0 pages, 0 bytes\n");
        return 0;
    }
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t map_offset = o.offset / page * page;
    const std::uint64_t skip = o.offset - map_offset;
    const std::uint64_t map_length = (skip + data->size() + page - 1) / page * page;

    auto conn = libclient::Connection::connect({socket, "pagerctl"});
    if (!conn) return report(conn.error());
    auto region = conn.value()->map_fd(fd.get(), {map_offset, map_length, libclient::Access::Shared, *tracking});
    if (!region) return report(region.error());
    std::memcpy(static_cast<char*>(region->addr) + skip, data->data(), data->size());
    auto flushed = conn.value()->flush(region.value());
    if (!flushed) return report(flushed.error());
    std::printf("flushed %llu pages, %llu bytes (tracking %s)\n", static_cast<unsigned long long>(flushed->pages),
                static_cast<unsigned long long>(flushed->bytes), libclient::tracking_name(region->tracking));
    auto unmapped = conn.value()->unmap(region.value());
    if (!unmapped) return report(unmapped.error());
    return 0;
}

}  // namespace pagerd::pagerctl
