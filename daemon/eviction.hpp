// Which resident page of the page cache to drop when the cache is over its memory budget.
//
// The daemon never sees hits: clients touch resident pages natively. It sees only loads (a
// client faulted on a page, or a prefetch loaded it). So the policy learns from refaults,
// loads of pages it evicted recently. 2Q (Johnson & Shasha, VLDB '94) adapted to that:
//   A1in   probationary FIFO of pages loaded for the first time, target budget/4;
//   A1out  ghost FIFO: keys of the last `budget` evicted pages, without their data;
//   Am     protected FIFO of pages loaded again while their key was in A1out.
// Eviction takes A1in's oldest while A1in is above its target (or Am is empty), else Am's
// oldest; either way the key enters A1out. A scan of new keys only ever cycles through
// A1in, while a hot set that came back after its first eviction sits in Am.
//
// Memory: a key (resident or ghost) is one 24-byte node in a dense pool plus its share of its
// cache's hash buckets, 4 bytes per 0.5 to 1.5 keys: at most 32 bytes a key, 29.4 while the
// tables grow (0.75 to 1.5 keys a bucket). A1out holds at most `budget` keys, so a full
// cache costs at most 2 x 32 = 64 bytes per page of budget, ghost entries included (57.5
// measured by test_eviction: 2^16 pages, four caches), plus one spare 96 KiB chunk of the
// pool and about 80 bytes per cache id. The pool stays dense (a freed node's slot takes the
// last node) and gives emptied chunks back: memory follows the keys tracked, not their
// high-water mark. At most 2^30 - 1 keys (resident and ghost).
//
// Every operation is O(1) amortized (expected, hashing), drop_cache O(pages of that cache).
// Not thread-safe: the caller holds the cache's lock. No I/O, no logging.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

namespace pagerd::daemon {

struct PageKey {
    std::uint32_t cache = 0;  // id of the cache (one per backing file)
    std::uint64_t page = 0;   // page index in that cache
    friend bool operator==(const PageKey&, const PageKey&) = default;
};

class EvictionPolicy {
public:
    explicit EvictionPolicy(std::uint64_t budget_pages);
    EvictionPolicy(const EvictionPolicy&) = delete;
    EvictionPolicy& operator=(const EvictionPolicy&) = delete;

    void set_budget(std::uint64_t pages);  // may shrink: next_victim then yields more
    std::uint64_t budget() const { return m_budget; }
    std::uint64_t resident() const { return m_count[k_a1in] + m_count[k_am]; }  // tracked as resident
    // A page became resident (loaded). True when it is a refault (its key was in the ghost
    // list); it then goes to Am. Loading a key that is already resident is a no-op returning false.
    // Throws std::length_error past 2^30 - 1 keys tracked (resident and ghost).
    bool on_load(PageKey k);
    // While resident() > budget(): the next page to evict, which leaves the resident queues
    // and enters the ghost list. std::nullopt when not over budget.
    std::optional<PageKey> next_victim();
    // A resident page left by other means (punched for another reason): forget it, no ghost.
    // A key that is not resident (unknown, or only a ghost) is left as it is.
    void on_drop(PageKey k);
    // Every page of one cache (the cache was destroyed): resident and ghost entries.
    void drop_cache(std::uint32_t cache);  // O(pages of that cache)
    std::uint64_t refaults() const { return m_refaults; }    // on_load calls that returned true
    std::uint64_t evictions() const { return m_evictions; }  // keys next_victim returned

    // Introspection, for statistics and tests.
    enum class Where { NONE, A1IN, AM, GHOST };
    Where where(PageKey k) const;
    std::uint64_t a1in_size() const { return m_count[k_a1in]; }
    std::uint64_t am_size() const { return m_count[k_am]; }
    std::uint64_t ghost_size() const { return m_count[k_ghost]; }
    // A1in above this is evicted first: a quarter of the budget, or more when the loads
    // in flight together are larger (pages read ahead must live until they are touched),
    // but never more than half: Am keeps room, or a refaulted page would be the next victim.
    std::uint64_t a1in_target() const
    {
        const std::uint64_t t = m_budget / 4 > m_min_a1in ? m_budget / 4 : m_min_a1in;
        return t < m_budget / 2 ? t : m_budget / 2;
    }
    void set_min_probation(std::uint64_t pages) { m_min_a1in = pages; }
    std::uint64_t ghost_capacity() const { return m_budget; }
    // Heap bytes held (pool chunks, hash buckets, per-cache tables), approximately.
    std::uint64_t memory_bytes() const;
    // Walks everything and checks every invariant: for tests. O(keys).
    bool consistent() const;

private:
    // Queue ids; the sentinel of queue q is node q of the pool (never moved, never freed).
    static constexpr std::uint32_t k_a1in = 0, k_am = 1, k_ghost = 2, k_queues = 3;
    std::uint64_t m_min_a1in = 0;
    static constexpr std::uint32_t k_nil = (1u << 30) - 1;  // "no node"; indices are < k_nil
    static constexpr unsigned k_chunk_shift = 12;           // 4096 nodes (96 KiB) a chunk
    static constexpr std::uint32_t k_chunk = 1u << k_chunk_shift;

    // 24 bytes. Queues are circular doubly linked lists through prev/next; a cache's hash
    // chains are singly linked through the low 30 bits of chain_queue, its queue in the top 2.
    struct Node {
        std::uint64_t page = 0;
        std::uint32_t cache = 0;
        std::uint32_t prev = 0;
        std::uint32_t next = 0;
        std::uint32_t chain_queue = 0;
    };
    static_assert(sizeof(Node) == 24);

    // One cache's hash table: buckets of node indices, chained. Power-of-two size, doubled
    // past 1.5 keys a bucket, halved below 0.5 (hysteresis: O(1) amortized).
    struct Table {
        std::vector<std::uint32_t> buckets;
        std::uint64_t count = 0;
        unsigned shift = 0;  // bucket = (page * golden) >> shift
    };

    Node& node(std::uint32_t i) { return m_chunks[i >> k_chunk_shift][i & (k_chunk - 1)]; }
    const Node& node(std::uint32_t i) const { return m_chunks[i >> k_chunk_shift][i & (k_chunk - 1)]; }
    static std::uint32_t chain_of(const Node& n) { return n.chain_queue & k_nil; }
    static std::uint32_t queue_of(const Node& n) { return n.chain_queue >> 30; }
    static void set_chain(Node& n, std::uint32_t c) { n.chain_queue = (n.chain_queue & ~k_nil) | c; }
    static void set_queue(Node& n, std::uint32_t q) { n.chain_queue = (n.chain_queue & k_nil) | (q << 30); }
    static std::size_t bucket_of(const Table& t, std::uint64_t page);

    std::uint32_t find(const Table& t, std::uint64_t page) const;
    void table_insert(Table& t, std::uint32_t i);
    void table_erase(Table& t, std::uint32_t i);
    // The link (bucket head or chain) of `page`'s bucket that holds `from` now holds `to`.
    void replace_link(Table& t, std::uint64_t page, std::uint32_t from, std::uint32_t to);
    void rehash(Table& t, std::size_t buckets);

    void push_back(std::uint32_t q, std::uint32_t i);
    void unlink(std::uint32_t i);

    std::uint32_t alloc();
    // Gives back slot i, whose node is already out of its queue and its table: the last node
    // of the pool moves into it.
    void release(std::uint32_t i);
    // Takes node i out of its queue and its table and frees it.
    void remove(std::uint32_t i);
    void trim_ghosts();

    std::vector<std::unique_ptr<Node[]>> m_chunks;
    std::uint32_t m_used = 0;  // nodes [0, m_used) are live: the sentinels, then the keys
    std::unordered_map<std::uint32_t, Table> m_tables;  // by cache id; only caches with keys
    std::uint64_t m_count[k_queues] = {0, 0, 0};
    std::uint64_t m_budget = 0;
    std::uint64_t m_refaults = 0;
    std::uint64_t m_evictions = 0;
};

}  // namespace pagerd::daemon
