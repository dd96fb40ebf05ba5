#include "stats.hpp"

#include <bit>

namespace pagerd::daemon {

unsigned Histogram::bucket_of(std::uint64_t ns)
{
    if (ns < k_sub) return static_cast<unsigned>(ns);
    const unsigned log = 63u - static_cast<unsigned>(std::countl_zero(ns));
    const unsigned frac = static_cast<unsigned>((ns >> (log - 2)) & (k_sub - 1));
    const unsigned b = (log - 1) * k_sub + frac;
    return b < k_buckets ? b : k_buckets - 1;
}

std::uint64_t Histogram::upper_bound_of(unsigned bucket)
{
    if (bucket < k_sub) return bucket;
    const unsigned log = bucket / k_sub + 1;
    const std::uint64_t frac = bucket % k_sub;
    return ((std::uint64_t{k_sub} + frac + 1) << (log - 2)) - 1;
}

void Histogram::record(std::uint64_t ns)
{
    m_counts[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    m_coarse[proto::latency_bucket(ns)].fetch_add(1, std::memory_order_relaxed);
    auto cur = m_max.load(std::memory_order_relaxed);
    while (ns > cur && !m_max.compare_exchange_weak(cur, ns, std::memory_order_relaxed)) {
    }
}

Histogram::Summary Histogram::summarize(const Histogram* const* hs, unsigned n)
{
    std::array<std::uint64_t, k_buckets> merged{};
    Summary s;
    for (unsigned i = 0; i < n; ++i) {
        for (unsigned b = 0; b < k_buckets; ++b) {
            const auto c = hs[i]->m_counts[b].load(std::memory_order_relaxed);
            merged[b] += c;
            s.count += c;
        }
        const auto m = hs[i]->m_max.load(std::memory_order_relaxed);
        if (m > s.max) s.max = m;
    }
    if (s.count == 0) return s;
    const std::uint64_t want50 = (s.count + 1) / 2, want99 = s.count - s.count / 100;
    std::uint64_t seen = 0;
    for (unsigned b = 0; b < k_buckets; ++b) {
        if (!merged[b]) continue;
        seen += merged[b];
        const auto bound = upper_bound_of(b) < s.max ? upper_bound_of(b) : s.max;
        if (!s.p50 && seen >= want50) s.p50 = bound;
        if (!s.p99 && seen >= want99) s.p99 = bound;
    }
    return s;
}

}  // namespace pagerd::daemon
