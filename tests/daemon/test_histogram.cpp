#include <catch2/catch.hpp>

#include "stats.hpp"

using namespace pagerd::daemon;

TEST_CASE("histogram: buckets are monotonic and their bounds contain their values", "[histogram]")
{
    unsigned last = 0;
    for (std::uint64_t ns : {0ull, 1ull, 3ull, 4ull, 5ull, 7ull, 8ull, 1000ull, 4095ull, 4096ull,
                             123456789ull, 1ull << 40, ~0ull}) {
        const unsigned b = Histogram::bucket_of(ns);
        CHECK(b >= last);
        last = b;
        CHECK(Histogram::upper_bound_of(b) >= ns);
        if (b > 0 && b + 1 < Histogram::k_buckets) CHECK(Histogram::upper_bound_of(b - 1) < ns);
    }
}

TEST_CASE("histogram: percentiles within a quarter power of two, max exact", "[histogram]")
{
    Histogram h;
    for (int i = 0; i < 98; ++i) h.record(10000);  // 10 µs
    h.record(2000000);                            // 2 ms
    h.record(3000000);                            // 3 ms
    const Histogram* hs[] = {&h};
    const auto s = Histogram::summarize(hs, 1);
    CHECK(s.count == 100);
    CHECK(s.p50 >= 10000);
    CHECK(s.p50 < 12500);
    CHECK(s.p99 >= 2000000);
    CHECK(s.p99 < 2500000);
    CHECK(s.max == 3000000);
    Histogram empty;
    const Histogram* es[] = {&empty};
    CHECK(Histogram::summarize(es, 1).count == 0);
}
