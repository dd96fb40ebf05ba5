// NBD stores: the real daemon reads and writes exports of a real nbdkit.
#include <sys/mman.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "harness.hpp"
#include "nbdkit.hpp"

using namespace pagerd;
using namespace pagerd::test;

namespace {

std::vector<std::string> allow(const Nbdkit& s, std::vector<std::string> extra = {})
{
    extra.push_back("--allow-store=" + s.allow_prefix());
    return extra;
}

std::uint64_t mismatches(const std::uint8_t* p, std::uint64_t len, std::uint32_t seed, std::uint64_t base = 0)
{
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < len; ++i) bad += p[i] != pattern_byte(base + i, seed);
    return bad;
}

}  // namespace

TEST_CASE("an NBD export over a Unix socket reads as the file it serves", "[nbd]")
{
    TempDir dir;
    const std::uint64_t size = 64ull << 20;
    make_file(dir.file("data"), size, 7);
    Nbdkit server("file", {dir.file("data")});
    Daemon d(allow(server));
    auto conn = d.connect();
    libclient::MapOptions o;
    o.length = size;
    auto r = conn->map_store(server.uri(), o);
    REQUIRE(r);
    const auto* p = static_cast<const std::uint8_t*>(r->addr);
    CHECK(mismatches(p, size, 7) == 0);
    auto stores = conn->stores();
    REQUIRE(stores);
    REQUIRE(stores->size() == 1);
    CHECK(stores->at(0).kind == "nbd");
    CHECK(stores->at(0).uri == server.uri());
    CHECK(stores->at(0).size == size);
    CHECK(stores->at(0).read_bytes >= size);
    CHECK(stores->at(0).connections >= 1);
    CHECK(conn->unmap(*r));
}
