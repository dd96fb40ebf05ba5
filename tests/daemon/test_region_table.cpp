#include <catch2/catch.hpp>

#include "region_table.hpp"

using namespace pagerd::daemon;

namespace {

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
    CHECK(t.remove_range(0x104000, 0x2000) == 0x2000);
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
    CHECK(t.remove_id(7) == 0xe000);
    CHECK(t.count() == 0);
    CHECK(t.bytes() == 0);
}

TEST_CASE("region table: an unmap across several regions trims both ends", "[region-table]")
{
    RegionTable t;
    t.insert(region(1, 0x1000, 0x3000, 0));
    t.insert(region(2, 0x5000, 0x2000, 0));
    t.insert(region(3, 0x8000, 0x3000, 0x1000));
    CHECK(t.remove_range(0x3000, 0x6000) == 0x1000 + 0x2000 + 0x1000);
    CHECK(t.count() == 2);
    CHECK(t.find(0x2fff)->length == 0x2000);
    CHECK(t.find(0x9000)->start == 0x9000);
    CHECK(t.find(0x9000)->file_offset == 0x2000);
    CHECK(t.remove_range(0x100000, 0x1000) == 0);
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
