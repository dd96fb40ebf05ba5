// pagerctl cat: map a file, or a store the daemon reaches itself (an NBD export, zero
// memory), through pagerd, touch every page in the chosen order from N threads, then write
// the bytes of the range to stdout in file order.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <optional>
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

// Touches every page of the region in the chosen order, writes its bytes
// [skip, skip + length) to stdout, unmaps it.
int cat_region(libclient::Connection& conn, const libclient::Region& region, std::uint64_t skip,
               std::uint64_t length, const CatOptions& o)
{
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const auto* base = static_cast<const volatile char*>(region.addr);
    const auto order = page_order(region.size / page, o.random);
    const unsigned threads = std::max(1u, o.threads);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (std::size_t i = t; i < order.size(); i += threads) (void)base[order[i] * page];
        });
    for (auto& th : pool) th.join();

    const int rc = write_all(static_cast<const char*>(region.addr) + skip, length);
    auto unmapped = conn.unmap(region);
    if (rc == 0 && !unmapped) return report(unmapped.error());
    return rc;
}

// The SIZE of "zero:SIZE" (bytes, or with K, M, G, T: powers of 1024), as the daemon reads
// it; nothing if it is none (the daemon then says what is wrong).
std::optional<std::uint64_t> zero_store_size(const std::string& uri)
{
    if (uri.rfind("zero:", 0) != 0) return std::nullopt;
    std::string n = uri.substr(5);
    unsigned shift = 0;
    if (!n.empty()) {
        const std::string units = "KMGT";
        if (const auto u = units.find(n.back()); u != std::string::npos) {
            shift = 10 * static_cast<unsigned>(u + 1);
            n.pop_back();
        }
    }
    if (n.empty() || n.size() > 20 || n.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    std::uint64_t v = 0;
    for (const char ch : n) {
        if (v > (~std::uint64_t{0} - 9) / 10) return std::nullopt;
        v = v * 10 + static_cast<unsigned>(ch - '0');
    }
    if (v == 0 || (shift && v > (~std::uint64_t{0} >> shift))) return std::nullopt;
    return v << shift;
}

// A store's size as the daemon's store list gives it, found by URI (nothing if it is not
// listed: another kind of name, or a daemon that lists no stores to this user).
Result<std::optional<std::uint64_t>> listed_store_size(libclient::Connection& conn, const std::string& uri)
{
    auto stores = conn.stores();
    if (!stores) return stores.error();
    for (const auto& s : *stores)
        if (s.kind != "file" && s.uri == uri) return std::optional<std::uint64_t>(s.size);
    return std::optional<std::uint64_t>();
}

// "nbd://...", "nbd+unix://...", "nbds://...", any "scheme://...", or "zero:SIZE": a store
// the daemon reaches itself, not a file (name a file of such a name "./zero:1G").
bool is_store_uri(const std::string& name)
{
    if (name.rfind("zero:", 0) == 0) return true;
    const auto colon = name.find("://");
    if (colon == std::string::npos || colon == 0) return false;
    for (std::size_t i = 0; i < colon; ++i) {
        const char ch = name[i];
        const bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        if (!(alpha || (i > 0 && ((ch >= '0' && ch <= '9') || ch == '+' || ch == '-' || ch == '.')))) return false;
    }
    return true;
}

// A map_store failure, with PAST_EOF said in words.
int report_store(const Error& e, const std::string& uri, std::uint64_t from, std::uint64_t to)
{
    if (!e.is_daemon(libclient::DaemonError::PAST_EOF)) return report(e);
    if (from == 0 && to == 0) return report(Error::system(EINVAL, uri + " is empty (" + e.message + ")"));
    return report(Error::system(EINVAL, "bytes " + std::to_string(from) + " to " + std::to_string(to) +
                                            " are past the end of " + uri + " (" + e.message + ")"));
}

int run_cat_store(const std::string& socket, const CatOptions& o)
{
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    auto conn = libclient::Connection::connect({socket, "pagerctl"});
    if (!conn) return report(conn.error());
    libclient::Connection& c = *conn.value();
    std::optional<std::uint64_t> size = zero_store_size(o.file);
    // The size of an NBD export is known to the daemon only: without --length, map the
    // export's first page, read its size from the daemon's store list, and keep that page
    // mapped (so that the daemon keeps its connection to the export) until the range is.
    std::optional<libclient::Region> probe;
    if (!size && o.length == 0) {
        libclient::MapOptions po{0, page, libclient::Access::ReadOnly};
        po.prefetch = libclient::Prefetch::None;
        auto p = c.map_store(o.file, po);
        if (!p) return report_store(p.error(), o.file, 0, 0);
        probe = p.value();
        auto listed = listed_store_size(c, o.file);
        if (!listed) return report(listed.error());
        if (!*listed)
            return report(Error::system(EINVAL, "give --length for " + o.file +
                                                    ": its size is unknown to the client, and pagerd's store list "
                                                    "does not show it"));
        size = *listed;
    }
    std::uint64_t length = o.length;
    if (size) {
        if (o.offset > *size)
            return report(Error::system(EINVAL, "offset is past the end of the store (" + std::to_string(*size) +
                                                    " bytes)"));
        length = o.length ? std::min(o.length, *size - o.offset) : *size - o.offset;
    }
    if (length == 0) return 0;
    const std::uint64_t map_offset = o.offset / page * page;
    const std::uint64_t skip = o.offset - map_offset;
    const std::uint64_t map_length = (skip + length + page - 1) / page * page;

    libclient::Region region;
    if (probe && map_offset == 0 && map_length == page && o.prefetch != libclient::Prefetch::All) {
        region = *probe;  // the probe is the whole range
        probe.reset();
    } else {
        libclient::MapOptions mo{map_offset, map_length, libclient::Access::ReadOnly};
        mo.prefetch = o.prefetch;
        auto r = c.map_store(o.file, mo);
        if (probe) (void)c.unmap(*probe);
        if (!r) return report_store(r.error(), o.file, o.offset, o.offset + length);
        region = r.value();
    }
    // --length given: the daemon maps whole pages, so the range may reach past the store's
    // end into its last page. Cut it there, as for a file.
    if (!size)
        if (auto listed = listed_store_size(c, o.file); listed && *listed)
            length = std::min(length, **listed > o.offset ? **listed - o.offset : 0);
    return cat_region(c, region, skip, length, o);
}

}  // namespace

int run_cat(const std::string& socket, const CatOptions& o)
{
    if (is_store_uri(o.file)) return run_cat_store(socket, o);
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
    return cat_region(*conn.value(), region.value(), skip, length, o);
}

}  // namespace pagerd::pagerctl
