// The zero store: "zero:SIZE" is demand-zero memory of the daemon's cache. ReadOnly
// regions read zeros, PrivateWritable regions keep their writes private (anonymous memory),
// Shared regions are refused, each map is a store of its own spanning just its region
// (from offset 0), and the cache evicts its pages freely (they read as zeros again).
#include <sys/mman.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "harness.hpp"
#include "nbdkit.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;
using libclient::Access;
using libclient::Prefetch;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;

Result<libclient::Region> map_zero(libclient::Connection& c, const std::string& uri, std::uint64_t offset,
                                   std::uint64_t length, Access access = Access::ReadOnly)
{
    libclient::MapOptions o;
    o.offset = offset;
    o.length = length;
    o.access = access;
    return c.map_store(uri, o);
}

libclient::Region map_or_fail(libclient::Connection& c, const std::string& uri, std::uint64_t offset,
                              std::uint64_t length, Access access = Access::ReadOnly)
{
    auto r = map_zero(c, uri, offset, length, access);
    if (!r) FAIL("map_store " << uri << ": " << r.error().message);
    return r.value();
}

void write_tag(std::uint8_t* page, std::uint64_t pg)
{
    const std::uint64_t v = 0x5A5A'0000'0000'0000ull | pg;
    for (std::uint64_t i = 0; i < k_page; i += 8) std::memcpy(page + i, &v, 8);
}

bool page_is_tag(const std::uint8_t* page, std::uint64_t pg)
{
    const std::uint64_t v = 0x5A5A'0000'0000'0000ull | pg;
    for (std::uint64_t i = 0; i < k_page; i += 8) {
        std::uint64_t got;
        std::memcpy(&got, page + i, 8);
        if (got != v) return false;
    }
    return true;
}

}  // namespace

TEST_CASE("zero:64M reads as zeros everywhere, a store of its own for each map", "[zero]")
{
    const std::uint64_t size = 64 * k_mib;
    Daemon d;
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, "zero:64M", 0, size);
    CHECK(nonzero_bytes(r.addr, size) == 0);
    const auto r2 = map_or_fail(*conn, "zero:64M", 0, size);
    CHECK(nonzero_bytes(r2.addr, size) == 0);
    auto stores = conn->stores();
    REQUIRE(stores);
    REQUIRE(stores->size() == 2);  // two maps of one URI: two stores
    for (const auto& s : *stores) {
        INFO(s.uri);
        CHECK(s.kind == "zero");
        CHECK(s.uri.rfind("zero:", 0) == 0);
        CHECK(s.size == size);
        CHECK(s.connections == 0);
        CHECK(s.read_errors == 0);
        CHECK(s.writes == 0);
    }
    auto caches = conn->caches();
    REQUIRE(caches);
    CHECK(caches->size() == 2);
    CHECK(d.status().sigbus_faults == 0);
    CHECK(conn->unmap(r));
    CHECK(conn->unmap(r2));
    // A region of a large zero store: the store spans the region only.
    const auto part = map_or_fail(*conn, "zero:1G", 0, 2 * k_mib);
    CHECK(nonzero_bytes(part.addr, 2 * k_mib) == 0);
    auto one = conn->stores();
    REQUIRE(one);
    REQUIRE(one->size() == 1);
    CHECK(one->at(0).size == 2 * k_mib);
    CHECK(conn->unmap(part));
}

TEST_CASE("PrivateWritable zero regions: writes stay in the writer's region, every other page is zeros", "[zero]")
{
    const std::uint64_t size = 16 * k_mib, pages = size / k_page;
    Daemon d;
    auto conn = d.connect();
    const auto a = map_or_fail(*conn, "zero:16M", 0, size, Access::PrivateWritable);
    const auto b = map_or_fail(*conn, "zero:16M", 0, size, Access::PrivateWritable);
    auto* p = static_cast<std::uint8_t*>(a.addr);
    auto* q = static_cast<std::uint8_t*>(b.addr);
    // a: every third page written, first touch a write for some, after a read for others.
    for (std::uint64_t pg = 0; pg < pages; pg += 3) {
        if (pg % 2) (void)*static_cast<volatile std::uint8_t*>(p + pg * k_page);
        write_tag(p + pg * k_page, pg);
    }
    std::uint64_t wrong_a = 0, wrong_b = 0;
    for (std::uint64_t pg = 0; pg < pages; ++pg) {
        const auto* page = p + pg * k_page;
        wrong_a += pg % 3 == 0 ? !page_is_tag(page, pg) : nonzero_bytes(page, k_page) != 0;
        wrong_b += nonzero_bytes(q + pg * k_page, k_page) != 0;
    }
    CHECK(wrong_a == 0);
    CHECK(wrong_b == 0);  // another map of the same URI is another store
    // Dropped, the written pages read as zeros again, like MAP_PRIVATE | MAP_ANONYMOUS.
    REQUIRE(::madvise(p, size, MADV_DONTNEED) == 0);
    CHECK(nonzero_bytes(p, size) == 0);
    auto stores = conn->stores();
    REQUIRE(stores);
    for (const auto& s : *stores) CHECK(s.writes == 0);
    CHECK(conn->unmap(a));
    CHECK(conn->unmap(b));
}

TEST_CASE("zero: URIs the daemon refuses: Shared is BAD_RANGE, a size that is not one BAD_DESCRIPTOR, past it PAST_EOF",
          "[zero]")
{
    Daemon d;
    auto conn = d.connect();
    auto code_of = [&](const std::string& uri, std::uint64_t offset, std::uint64_t length,
                       Access access = Access::ReadOnly) -> std::string {
        auto r = map_zero(*conn, uri, offset, length, access);
        if (r) {
            const bool zeros = nonzero_bytes(r->addr, length) == 0;
            (void)conn->unmap(*r);
            return zeros ? "mapped" : "mapped, not zeros";
        }
        if (!r.error().is_daemon()) return "not-daemon: " + r.error().message;
        UNSCOPED_INFO(uri << ": " << r.error().message);
        return libclient::daemon_error_name(static_cast<libclient::DaemonError>(r.error().code));
    };
    CHECK(code_of("zero:64M", 0, k_mib, Access::Shared) == "BAD_RANGE");
    CHECK(code_of("zero:0", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:0K", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:abc", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:-1", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:1.5G", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:1g", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:1MB", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero: 1M", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:99999999999999999999", 0, k_mib) == "BAD_DESCRIPTOR");  // past 2^64
    CHECK(code_of("zero:18446744073709551615T", 0, k_mib) == "BAD_DESCRIPTOR");
    CHECK(code_of("zero:17T", 0, k_mib) == "BAD_RANGE");  // more than 16 TiB
    CHECK(code_of("zero:16385G", 0, k_mib) == "BAD_RANGE");
    CHECK(code_of("ZERO:1M", 0, k_mib) == "BAD_DESCRIPTOR");
    // Past the end of the store; and anywhere but offset 0 (every offset reads the same).
    CHECK(code_of("zero:1M", 0, 2 * k_mib) == "PAST_EOF");
    CHECK(code_of("zero:1M", k_mib, k_page) == "BAD_RANGE");
    CHECK(code_of("zero:64M", k_page, k_page) == "BAD_RANGE");
    CHECK(code_of("zero:16T", (std::uint64_t{16} << 40) - k_mib, k_mib) == "BAD_RANGE");
    // Sizes that are fine: the largest, a byte count, one that is not a page multiple
    // (its last page reads zeros like the rest).
    CHECK(code_of("zero:16T", 0, k_mib) == "mapped");
    CHECK(code_of("zero:1048576", 0, k_mib) == "mapped");
    CHECK(code_of("zero:4097", 0, 2 * k_page) == "mapped");
    CHECK(code_of("zero:4097", 0, 3 * k_page) == "PAST_EOF");
    auto stores = conn->stores();
    REQUIRE(stores);
    CHECK(stores->empty());
    CHECK(d.status().sigbus_faults == 0);
}

TEST_CASE("a zero region eight times the cache budget: read twice, zeros throughout, the cache evicts",
          "[zero][eviction]")
{
    const std::uint64_t size = 64 * k_mib;
    Daemon d({"--memory-max", "8MiB"});
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, "zero:64M", 0, size);
    CHECK(nonzero_bytes(r.addr, size) == 0);
    REQUIRE(::madvise(r.addr, size, MADV_DONTNEED) == 0);
    CHECK(nonzero_bytes(r.addr, size) == 0);
    const auto st = d.status();
    INFO("cache: budget " << st.cache_budget << ", bytes " << st.cache_bytes << ", evictions " << st.cache_evictions);
    CHECK(st.cache_evictions > 0);
    CHECK(st.cache_bytes <= st.cache_budget);
    CHECK(st.sigbus_faults == 0);
    // Private writes beyond the budget: the writer's memory, not the cache's.
    const auto w = map_or_fail(*conn, "zero:32M", 0, 32 * k_mib, Access::PrivateWritable);
    auto* p = static_cast<std::uint8_t*>(w.addr);
    for (std::uint64_t pg = 0; pg < 32 * k_mib / k_page; ++pg) write_tag(p + pg * k_page, pg);
    std::uint64_t wrong = 0;
    for (std::uint64_t pg = 0; pg < 32 * k_mib / k_page; ++pg) wrong += !page_is_tag(p + pg * k_page, pg);
    CHECK(wrong == 0);
    const auto st2 = d.status();
    CHECK(st2.cache_bytes <= st2.cache_budget);
    CHECK(st2.cache_dirty_bytes == 0);
    CHECK(conn->unmap(w));
    CHECK(conn->unmap(r));
}

// A zero store spans its region only (c376654; it used to span [0, offset + length), so
// that one client's five 4 KiB regions at the end of zero:16T used up the page cache's
// 64 TiB of address space and every other client's maps got LIMIT).
TEST_CASE("a client's small regions of big zero stores leave other clients room to map", "[zero][limits]")
{
    TempDir dir;
    make_pattern_file(dir.file("data"), 4 * k_mib, 131);
    Daemon d;
    auto hog = d.connect("hog");
    const std::uint64_t vm_before = proc_status_bytes(d.pid(), "VmSize");
    std::vector<libclient::Region> held;
    std::string refused;
    for (int i = 0; i < 64; ++i) {
        // Far into the store: refused. From its start: a store of 4 KiB.
        auto far = map_zero(*hog, "zero:16T", (std::uint64_t{16} << 40) - k_page, k_page);
        if (far) held.push_back(*far);
        auto r = map_zero(*hog, "zero:16T", 0, k_page);
        if (r)
            held.push_back(*r);
        else
            refused = r.error().message;
    }
    INFO("the hog holds " << held.size() << " regions of 4 KiB; refused: " << refused << "\\ndaemon VmSize "
                          << proc_status_bytes(d.pid(), "VmSize") / (std::uint64_t{1} << 30) << " GiB");
    CHECK(held.size() == 64);
    CHECK(refused.empty());
    auto stores = hog->stores();
    REQUIRE(stores);
    for (const auto& s : *stores) CHECK(s.size == k_page);
    // Less than 1 TiB more address space for all of them (the cache reserves 1 GiB of room
    // per cache; a sanitizer's own reservations are there before and after).
    CHECK(proc_status_bytes(d.pid(), "VmSize") - vm_before < (std::uint64_t{1} << 40));
    auto other = d.connect("other");
    auto z = map_zero(*other, "zero:1M", 0, k_mib);
    INFO("another client's zero:1M: " << (z ? std::string("mapped") : z.error().message));
    CHECK(z);
    auto f = other->map_file(dir.file("data"), {0, 4 * k_mib, Access::ReadOnly});
    INFO("another client's 4 MiB file: " << (f ? std::string("mapped") : f.error().message));
    REQUIRE(f);
    CHECK(pattern_mismatches(f->addr, 4 * k_mib, 0, 131) == 0);
}
