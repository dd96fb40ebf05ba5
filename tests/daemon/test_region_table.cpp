#include <catch2/catch.hpp>

#include "region_table.hpp"

using namespace pagerd::daemon;

namespace {

std::uint64_t bytes(const std::vector<Region>& pieces)
{
    std::uint64_t n = 0;
    for (const auto& r : pieces) n += r.length;
    return n;
}

Region region(std::uint64_t id, std::uint64_t start, std::uint64_t len, std::uint64_t off)
{
    Region r;
    r.id = id;
    r.start = start;
    r.length = len;
    r.file_offset = off;
    return r;
}

}  // namespace

TEST_CASE("region table: find and overlap at the edges", "[region-table]")
{
    RegionTable t;
    t.insert(region(1, 0x10000, 0x4000, 0));
    t.insert(region(2, 0x20000, 0x1000, 0x8000));
    CHECK(t.find(0xffff) == nullptr);
    REQUIRE(t.find(0x10000) != nullptr);
    CHECK(t.find(0x13fff)->id == 1);
    CHECK(t.find(0x14000) == nullptr);
    CHECK(t.find(0x20fff)->id == 2);
    CHECK(t.overlaps(0xf000, 0x1001));
    CHECK_FALSE(t.overlaps(0xf000, 0x1000));
    CHECK_FALSE(t.overlaps(0x14000, 0xc000));
    CHECK(t.overlaps(0x14000, 0xc001));
    CHECK(t.overlaps(0x11000, 0x1000));  // inside
    CHECK(t.overlaps(0x0, 0x100000));    // around
    CHECK(t.count() == 2);
    CHECK(t.bytes() == 0x5000);
}

TEST_CASE("region table: unmapping the middle splits a region, offsets follow", "[region-table]")
{
    RegionTable t;
    t.insert(region(7, 0x100000, 0x10000, 0x3000));
    CHECK(bytes(t.remove_range(0x104000, 0x2000)) == 0x2000);
    REQUIRE(t.count() == 2);
    CHECK(t.bytes() == 0xe000);
    const Region* left = t.find(0x100000);
    const Region* right = t.find(0x106000);
    REQUIRE(left);
    REQUIRE(right);
    CHECK(left->length == 0x4000);
    CHECK(left->file_offset == 0x3000);
    CHECK(right->start == 0x106000);
    CHECK(right->length == 0xa000);
    CHECK(right->file_offset == 0x3000 + 0x6000);
    CHECK(t.find(0x104000) == nullptr);
    CHECK(bytes(t.remove_id(7)) == 0xe000);
    CHECK(t.count() == 0);
    CHECK(t.bytes() == 0);
}

TEST_CASE("region table: an unmap across several regions trims both ends", "[region-table]")
{
    RegionTable t;
    t.insert(region(1, 0x1000, 0x3000, 0));
    t.insert(region(2, 0x5000, 0x2000, 0));
    t.insert(region(3, 0x8000, 0x3000, 0x1000));
    const auto removed = t.remove_range(0x3000, 0x6000);
    CHECK(bytes(removed) == 0x1000 + 0x2000 + 0x1000);
    REQUIRE(removed.size() == 3);
    CHECK(removed[0].start == 0x3000);      // the tail of region 1
    CHECK(removed[0].file_offset == 0x2000);
    CHECK(removed[2].start == 0x8000);      // the head of region 3
    CHECK(removed[2].length == 0x1000);
    CHECK(t.count() == 2);
    CHECK(t.find(0x2fff)->length == 0x2000);
    CHECK(t.find(0x9000)->start == 0x9000);
    CHECK(t.find(0x9000)->file_offset == 0x2000);
    CHECK(t.remove_range(0x100000, 0x1000).empty());
}

TEST_CASE("region table: a split keeps memfd offsets of Shared pieces in step with file offsets", "[region-table]")
{
    RegionTable t;
    Region r = region(3, 0x200000, 0x8000, 0x10000);
    r.access = pagerd::proto::Access::SHARED;
    r.mem_offset = 0;
    t.insert(r);
    t.remove_range(0x202000, 0x1000);
    const Region* right = t.find(0x203000);
    REQUIRE(right);
    CHECK(right->mem_offset == 0x3000);
    CHECK(right->file_offset == 0x13000);
    CHECK(right->shared());
}

TEST_CASE("region table: mremap moves pieces and replaces what was at the destination", "[region-table]")
{
    RegionTable t;
    t.insert(region(1, 0x10000, 0x4000, 0x1000));
    t.insert(region(2, 0x40000, 0x2000, 0));
    t.move_range(0x11000, 0x40000, 0x2000);  // middle of region 1 over region 2
    CHECK(t.count() == 3);
    const Region* moved = t.find(0x40000);
    REQUIRE(moved);
    CHECK(moved->id == 1);
    CHECK(moved->file_offset == 0x2000);
    CHECK(moved->length == 0x2000);
    CHECK(t.find(0x11000) == nullptr);
    CHECK(t.find(0x13000)->file_offset == 0x4000);
    CHECK(t.bytes() == 0x4000);
}
