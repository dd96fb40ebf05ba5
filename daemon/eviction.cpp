#include "eviction.hpp"

#include <algorithm>
#include <bit>
#include <functional>
#include <new>
#include <stdexcept>

namespace pagerd::daemon {

namespace {

constexpr std::size_t k_min_buckets = 8;
constexpr std::uint64_t k_golden = 0x9e3779b97f4a7c15ull;  // Fibonacci hashing: the top bits

}  // namespace

EvictionPolicy::EvictionPolicy(std::uint64_t budget_pages) : m_budget(budget_pages)
{
    m_chunks.push_back(std::make_unique<Node[]>(k_chunk));
    for (std::uint32_t q = 0; q < k_queues; ++q) {
        Node& s = node(q);
        s.prev = s.next = q;
        s.chain_queue = k_nil;
        set_queue(s, q);
    }
    m_used = k_queues;
}

void EvictionPolicy::set_budget(std::uint64_t pages)
{
    m_budget = pages;
    trim_ghosts();
}

bool EvictionPolicy::on_load(PageKey k)
{
    auto it = m_tables.find(k.cache);
    if (it != m_tables.end()) {
        const std::uint32_t i = find(it->second, k.page);
        if (i != k_nil) {
            if (queue_of(node(i)) != k_ghost) return false;  // already resident
            unlink(i);
            push_back(k_am, i);
            ++m_refaults;
            return true;
        }
    }
    // A new key. Everything that allocates comes first, so that a throw changes nothing.
    if (m_used == k_nil) throw std::length_error("EvictionPolicy: too many keys");
    if ((m_used >> k_chunk_shift) == m_chunks.size()) m_chunks.push_back(std::make_unique<Node[]>(k_chunk));
    if (it == m_tables.end()) it = m_tables.try_emplace(k.cache).first;
    Table& t = it->second;
    try {
        if (t.buckets.empty())
            rehash(t, k_min_buckets);
        else if (t.count + 1 > t.buckets.size() + t.buckets.size() / 2)
            rehash(t, t.buckets.size() * 2);
    } catch (...) {
        if (t.count == 0) m_tables.erase(it);
        throw;
    }
    const std::uint32_t i = m_used++;
    Node& n = node(i);
    n = Node{};
    n.page = k.page;
    n.cache = k.cache;
    table_insert(t, i);
    push_back(k_a1in, i);
    return false;
}

std::optional<PageKey> EvictionPolicy::next_victim()
{
    if (resident() <= m_budget) return std::nullopt;
    const std::uint32_t q = (m_count[k_a1in] > a1in_target() || m_count[k_am] == 0) ? k_a1in : k_am;
    const std::uint32_t i = node(q).next;  // the oldest
    const PageKey victim{node(i).cache, node(i).page};
    unlink(i);
    push_back(k_ghost, i);
    ++m_evictions;
    trim_ghosts();
    return victim;
}

void EvictionPolicy::on_drop(PageKey k)
{
    const auto it = m_tables.find(k.cache);
    if (it == m_tables.end()) return;
    const std::uint32_t i = find(it->second, k.page);
    if (i != k_nil && queue_of(node(i)) != k_ghost) remove(i);
}

void EvictionPolicy::drop_cache(std::uint32_t cache)
{
    const auto it = m_tables.find(cache);
    if (it == m_tables.end()) return;
    std::vector<std::uint32_t> nodes;
    nodes.reserve(it->second.count);
    for (std::uint32_t head : it->second.buckets)
        for (std::uint32_t i = head; i != k_nil; i = chain_of(node(i))) nodes.push_back(i);
    for (std::uint32_t i : nodes) unlink(i);
    m_tables.erase(it);
    // Highest slot first: the node release() moves down into a slot is then never one of
    // these (those above were released already), always a live node of another cache.
    std::sort(nodes.begin(), nodes.end(), std::greater<>());
    for (std::uint32_t i : nodes) release(i);
}

EvictionPolicy::Where EvictionPolicy::where(PageKey k) const
{
    const auto it = m_tables.find(k.cache);
    if (it == m_tables.end()) return Where::NONE;
    const std::uint32_t i = find(it->second, k.page);
    if (i == k_nil) return Where::NONE;
    switch (queue_of(node(i))) {
    case k_a1in:
        return Where::A1IN;
    case k_am:
        return Where::AM;
    default:
        return Where::GHOST;
    }
}

std::uint64_t EvictionPolicy::memory_bytes() const
{
    std::uint64_t bytes = m_chunks.size() * std::uint64_t{k_chunk} * sizeof(Node) +
                          m_chunks.capacity() * sizeof(m_chunks[0]) + m_tables.bucket_count() * sizeof(void*);
    for (const auto& [cache, t] : m_tables)  // the map's node: the pair, a link, the hash
        bytes += t.buckets.capacity() * sizeof(std::uint32_t) + sizeof(cache) + sizeof(t) + 2 * sizeof(void*);
    return bytes;
}

bool EvictionPolicy::consistent() const
{
    if (m_used < k_queues || m_chunks.empty()) return false;
    const std::size_t chunks_needed = (m_used + k_chunk - 1) / k_chunk;
    if (m_chunks.size() < chunks_needed || m_chunks.size() > chunks_needed + 1) return false;
    // Queues: well linked, tagged, counted.
    std::uint64_t keys = 0;
    for (std::uint32_t q = 0; q < k_queues; ++q) {
        if (queue_of(node(q)) != q) return false;
        std::uint64_t n = 0;
        std::uint32_t prev = q;
        for (std::uint32_t i = node(q).next; i != q; prev = i, i = node(i).next) {
            if (i < k_queues || i >= m_used || node(i).prev != prev || queue_of(node(i)) != q) return false;
            if (++n > m_used) return false;  // a cycle that misses the sentinel
        }
        if (node(q).prev != prev || n != m_count[q]) return false;
        keys += n;
    }
    if (keys != m_used - k_queues) return false;
    if (m_count[k_ghost] > ghost_capacity()) return false;
    // Tables: each chain entry a live node of that cache in the right bucket; as many
    // entries as nodes, and every node found under its key: one entry per node.
    std::uint64_t entries = 0;
    for (const auto& [cache, t] : m_tables) {
        const std::size_t size = t.buckets.size();
        if (t.count == 0 || size < k_min_buckets || !std::has_single_bit(size) ||
            t.shift != 64u - static_cast<unsigned>(std::countr_zero(size)))
            return false;
        std::uint64_t n = 0;
        for (std::size_t b = 0; b < size; ++b)
            for (std::uint32_t i = t.buckets[b]; i != k_nil; i = chain_of(node(i))) {
                if (i < k_queues || i >= m_used || node(i).cache != cache || bucket_of(t, node(i).page) != b)
                    return false;
                if (++n > m_used) return false;
            }
        if (n != t.count) return false;
        entries += n;
    }
    if (entries != keys) return false;
    for (std::uint32_t i = k_queues; i < m_used; ++i) {
        const auto it = m_tables.find(node(i).cache);
        if (it == m_tables.end() || find(it->second, node(i).page) != i) return false;
    }
    return true;
}

std::size_t EvictionPolicy::bucket_of(const Table& t, std::uint64_t page)
{
    return static_cast<std::size_t>((page * k_golden) >> t.shift);
}

std::uint32_t EvictionPolicy::find(const Table& t, std::uint64_t page) const
{
    std::uint32_t i = t.buckets[bucket_of(t, page)];
    while (i != k_nil && node(i).page != page) i = chain_of(node(i));
    return i;
}

void EvictionPolicy::table_insert(Table& t, std::uint32_t i)
{
    // The caller made room (on_load): nothing here allocates.
    std::uint32_t& head = t.buckets[bucket_of(t, node(i).page)];
    set_chain(node(i), head);
    head = i;
    ++t.count;
}

void EvictionPolicy::table_erase(Table& t, std::uint32_t i)
{
    replace_link(t, node(i).page, i, chain_of(node(i)));
    --t.count;
    if (t.count > 0 && t.buckets.size() > k_min_buckets && t.count < t.buckets.size() / 2) {
        try {
            rehash(t, t.buckets.size() / 2);
        } catch (const std::bad_alloc&) {
            // Keep the larger table: removal does not fail.
        }
    }
}

void EvictionPolicy::replace_link(Table& t, std::uint64_t page, std::uint32_t from, std::uint32_t to)
{
    std::uint32_t& head = t.buckets[bucket_of(t, page)];
    if (head == from) {
        head = to;
        return;
    }
    std::uint32_t p = head;
    while (chain_of(node(p)) != from) p = chain_of(node(p));
    set_chain(node(p), to);
}

void EvictionPolicy::rehash(Table& t, std::size_t buckets)
{
    std::vector<std::uint32_t> fresh(buckets, k_nil);  // the only allocation: strong guarantee
    Table next;
    next.shift = 64u - static_cast<unsigned>(std::countr_zero(buckets));
    for (std::uint32_t head : t.buckets)
        for (std::uint32_t i = head; i != k_nil;) {
            Node& n = node(i);
            const std::uint32_t after = chain_of(n);
            std::uint32_t& b = fresh[bucket_of(next, n.page)];
            set_chain(n, b);
            b = i;
            i = after;
        }
    t.buckets = std::move(fresh);
    t.shift = next.shift;
}

void EvictionPolicy::push_back(std::uint32_t q, std::uint32_t i)
{
    Node& n = node(i);
    const std::uint32_t tail = node(q).prev;
    n.prev = tail;
    n.next = q;
    node(tail).next = i;
    node(q).prev = i;
    set_queue(n, q);
    ++m_count[q];
}

void EvictionPolicy::unlink(std::uint32_t i)
{
    const Node& n = node(i);
    node(n.prev).next = n.next;
    node(n.next).prev = n.prev;
    --m_count[queue_of(n)];
}

void EvictionPolicy::release(std::uint32_t i)
{
    const std::uint32_t last = m_used - 1;
    if (i != last) {
        // The last node moves down into slot i: its neighbours and its hash link follow.
        Node& n = node(i);
        n = node(last);
        node(n.prev).next = i;
        node(n.next).prev = i;
        replace_link(m_tables.find(n.cache)->second, n.page, last, i);
    }
    --m_used;
    // Keep one spare chunk, so that a load and an eviction at a boundary do not churn.
    const std::size_t needed = (m_used + k_chunk - 1) / k_chunk;
    while (m_chunks.size() > needed + 1) m_chunks.pop_back();
}

void EvictionPolicy::remove(std::uint32_t i)
{
    unlink(i);
    const auto it = m_tables.find(node(i).cache);
    table_erase(it->second, i);
    if (it->second.count == 0) m_tables.erase(it);
    release(i);
}

void EvictionPolicy::trim_ghosts()
{
    while (m_count[k_ghost] > ghost_capacity()) remove(node(k_ghost).next);
}

}  // namespace pagerd::daemon
