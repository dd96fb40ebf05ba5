// fdstore::parse_state: the description of a client that an earlier daemon left in the
// descriptor store, as fdstore.cpp's describe() writes it.
#include <catch2/catch.hpp>

#include "fdstore.hpp"

using pagerd::daemon::fdstore::parse_state;

namespace {

const std::string k_head = "pagerd-client-state 1\n";
const std::string k_client = "client 12 0 1000 1000 6b6964 1 0 21569 0 4\n";
const std::string k_region = "region 1 139637976727552 1048576 0 0 0 0 0 0 0 0 1 1\n";

}  // namespace

TEST_CASE("a client's state without a forked line is a client of its own, with its regions", "[fdstore]")
{
    const auto s = parse_state(k_head + k_client + k_region);
    REQUIRE(s);
    CHECK(s->serial == 12);
    CHECK(s->forked_from == 0);
    CHECK(s->regions.size() == 1);
    CHECK(s->name == "kid");
}

TEST_CASE("a forked child's state names its parent, and keeps the regions after that line", "[fdstore][fork]")
{
    const auto s = parse_state(k_head + k_client + "forked 11\n" + k_region + k_region);
    REQUIRE(s);
    CHECK(s->forked_from == 11);
    CHECK(s->regions.size() == 2);
    CHECK(s->regions[0].cached == 1);
}

TEST_CASE("forked lines no daemon writes are refused", "[fdstore][fork]")
{
    CHECK_FALSE(parse_state(k_head + k_client + "forked 0\n" + k_region));    // no parent
    CHECK_FALSE(parse_state(k_head + k_client + "forked 12\n" + k_region));   // itself
    CHECK_FALSE(parse_state(k_head + k_client + "forked 40\n" + k_region));   // a later client
    CHECK_FALSE(parse_state(k_head + k_client + "forked x\n" + k_region));    // not a number
    // After a region, or a second one: not a line describe() writes; the regions end there.
    const auto late = parse_state(k_head + k_client + k_region + "forked 11\n" + k_region);
    REQUIRE(late);
    CHECK(late->forked_from == 0);
    CHECK(late->regions.size() == 1);
    const auto twice = parse_state(k_head + k_client + "forked 11\nforked 10\n" + k_region);
    REQUIRE(twice);
    CHECK(twice->forked_from == 11);
    CHECK(twice->regions.empty());
}

TEST_CASE("a forked child's lost regions are read, and an end line ends the state", "[fdstore][fork]")
{
    const auto s = parse_state(k_head + k_client + "forked 11\n" + k_region + "lost 139637977776128 65536\n" +
                               "end\n" + "region 2 1 2 3 0 0 0 0 0 0 0 0 1\n");
    REQUIRE(s);
    CHECK(s->regions.size() == 1);  // the line after "end" is a tail left by a longer text
    REQUIRE(s->lost.size() == 1);
    CHECK(s->lost[0].first == 139637977776128ull);
    CHECK(s->lost[0].second == 65536);
    CHECK_FALSE(parse_state(k_head + k_client + "forked 11\nlost 5\n"));  // cut short
    const auto not_forked = parse_state(k_head + k_client + "lost 1 2\n" + k_region);
    REQUIRE(not_forked);  // only a forked child has lost regions: the regions end there
    CHECK(not_forked->lost.empty());
    CHECK(not_forked->regions.empty());
}
