// Counters and a log-scale latency histogram, written by one worker, read by anyone.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>

#include "pagerd/proto/constants.hpp"

namespace pagerd::daemon {

class Histogram {
public:
    static constexpr unsigned k_sub = 4;  // buckets per power of two
    static constexpr unsigned k_buckets = 64 * k_sub;

    void record(std::uint64_t ns);
    // Merged view over several histograms.
    struct Summary {
        std::uint64_t count = 0, p50 = 0, p99 = 0, max = 0;
    };
    static Summary summarize(const Histogram* const* hs, unsigned n);
    static unsigned bucket_of(std::uint64_t ns);
    static std::uint64_t upper_bound_of(unsigned bucket);
    // The wire's 16 coarse buckets (proto::latency_bucket()), counted exactly.
    std::uint64_t coarse(unsigned bucket) const { return m_coarse[bucket].load(std::memory_order_relaxed); }

private:
    std::array<std::atomic<std::uint64_t>, k_buckets> m_counts{};
    std::atomic<std::uint64_t> m_max{0};
    std::array<std::atomic<std::uint64_t>, proto::k_latency_buckets> m_coarse{};
};

struct WorkerStats {
    std::atomic<std::uint32_t> clients{0};
    std::atomic<std::uint32_t> user_mode_only_clients{0};
    std::atomic<std::uint64_t> regions{0};
    std::atomic<std::uint64_t> mapped_bytes{0};
    std::atomic<std::uint64_t> faults{0};
    std::atomic<std::uint64_t> pages_installed{0};
    std::atomic<std::uint64_t> bytes_read{0};
    std::atomic<std::uint64_t> sigbus_faults{0};
    std::atomic<std::uint64_t> pages_prefetched{0};  // installed by read-ahead and prefetches
    Histogram latency;
};

}  // namespace pagerd::daemon
