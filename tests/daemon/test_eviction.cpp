#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <iterator>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "eviction.hpp"

using namespace pagerd::daemon;
using Where = EvictionPolicy::Where;

namespace {

PageKey key(std::uint32_t cache, std::uint64_t page) { return PageKey{cache, page}; }

// Loads k and evicts until within budget; returns the victims.
std::vector<PageKey> load(EvictionPolicy& p, PageKey k)
{
    p.on_load(k);
    std::vector<PageKey> out;
    while (auto v = p.next_victim()) out.push_back(*v);
    return out;
}

// The policy written the obvious way (lists and a map), to check the real one against.
class Reference {
public:
    explicit Reference(std::uint64_t budget) : m_budget(budget) {}

    void set_budget(std::uint64_t pages)
    {
        m_budget = pages;
        trim();
    }
    std::uint64_t resident() const { return m_q[0].size() + m_q[1].size(); }
    bool on_load(PageKey k)
    {
        auto it = m_where.find(id(k));
        if (it != m_where.end()) {
            if (it->second.first != 2) return false;
            m_q[2].erase(it->second.second);
            m_q[1].push_back(k);
            it->second = {1, std::prev(m_q[1].end())};
            ++refaults;
            return true;
        }
        m_q[0].push_back(k);
        m_where[id(k)] = {0, std::prev(m_q[0].end())};
        return false;
    }
    std::optional<PageKey> next_victim()
    {
        if (resident() <= m_budget) return std::nullopt;
        const int q = (m_q[0].size() > m_budget / 4 || m_q[1].empty()) ? 0 : 1;
        const PageKey k = m_q[q].front();
        m_q[q].pop_front();
        m_q[2].push_back(k);
        m_where[id(k)] = {2, std::prev(m_q[2].end())};
        ++evictions;
        trim();
        return k;
    }
    void on_drop(PageKey k)
    {
        auto it = m_where.find(id(k));
        if (it == m_where.end() || it->second.first == 2) return;
        m_q[it->second.first].erase(it->second.second);
        m_where.erase(it);
    }
    void drop_cache(std::uint32_t cache)
    {
        for (auto it = m_where.begin(); it != m_where.end();) {
            if (it->first.first == cache) {
                m_q[it->second.first].erase(it->second.second);
                it = m_where.erase(it);
            } else {
                ++it;
            }
        }
    }
    Where where(PageKey k) const
    {
        auto it = m_where.find(id(k));
        if (it == m_where.end()) return Where::NONE;
        return it->second.first == 0 ? Where::A1IN : it->second.first == 1 ? Where::AM : Where::GHOST;
    }
    std::size_t size(int q) const { return m_q[q].size(); }

    std::uint64_t refaults = 0;
    std::uint64_t evictions = 0;

private:
    using Id = std::pair<std::uint32_t, std::uint64_t>;
    static Id id(PageKey k) { return {k.cache, k.page}; }
    void trim()
    {
        while (m_q[2].size() > m_budget) {
            m_where.erase(id(m_q[2].front()));
            m_q[2].pop_front();
        }
    }
    std::uint64_t m_budget;
    std::list<PageKey> m_q[3];  // A1in, Am, A1out
    std::map<Id, std::pair<int, std::list<PageKey>::iterator>> m_where;
};

// Plain FIFO of `budget` pages, the baseline of the scan test.
class Fifo {
public:
    explicit Fifo(std::uint64_t budget) : m_budget(budget) {}
    bool resident(PageKey k) const { return m_set.count({k.cache, k.page}) != 0; }
    void load(PageKey k)
    {
        m_queue.push_back(k);
        m_set.insert({k.cache, k.page});
        while (m_queue.size() > m_budget) {
            m_set.erase({m_queue.front().cache, m_queue.front().page});
            m_queue.pop_front();
        }
    }

private:
    std::uint64_t m_budget;
    std::deque<PageKey> m_queue;
    std::set<std::pair<std::uint32_t, std::uint64_t>> m_set;
};

}  // namespace

TEST_CASE("eviction: the budget holds, victims only while over it", "[eviction]")
{
    EvictionPolicy p(100);
    CHECK(p.budget() == 100);
    CHECK_FALSE(p.next_victim());
    std::set<std::uint64_t> resident;
    for (std::uint64_t i = 0; i < 1000; ++i) {
        CHECK_FALSE(p.on_load(key(1, i)));
        resident.insert(i);
        while (auto v = p.next_victim()) {
            REQUIRE(v->cache == 1);
            REQUIRE(resident.erase(v->page) == 1);  // only resident pages are victims
        }
        REQUIRE(p.resident() == std::min<std::uint64_t>(i + 1, 100));
        REQUIRE(p.resident() == resident.size());
    }
    CHECK(p.evictions() == 900);
    CHECK(p.refaults() == 0);
    CHECK(p.ghost_size() == 100);  // bounded by the budget
    CHECK(p.consistent());
}

TEST_CASE("eviction: A1in is a FIFO, a resident reload changes nothing", "[eviction]")
{
    EvictionPolicy p(8);
    for (std::uint64_t i = 0; i < 8; ++i) CHECK(load(p, key(3, i)).empty());
    // Reloading resident pages is a no-op: the order stays that of the first loads.
    CHECK_FALSE(p.on_load(key(3, 0)));
    CHECK_FALSE(p.on_load(key(3, 5)));
    CHECK(p.resident() == 8);
    for (std::uint64_t i = 8; i < 40; ++i) {
        const auto victims = load(p, key(3, i));
        REQUIRE(victims.size() == 1);
        CHECK(victims[0] == key(3, i - 8));
        CHECK(p.where(key(3, i - 8)) == Where::GHOST);
    }
    CHECK(p.am_size() == 0);
    CHECK(p.a1in_size() == 8);
}

TEST_CASE("eviction: a refault goes to Am, which gives up its oldest once A1in is small", "[eviction]")
{
    EvictionPolicy p(4);  // A1in target 1, ghost list of 4
    REQUIRE(p.a1in_target() == 1);
    for (std::uint64_t i = 0; i < 4; ++i) load(p, key(0, i));
    CHECK(load(p, key(0, 4)) == std::vector{key(0, 0)});
    CHECK(load(p, key(0, 5)) == std::vector{key(0, 1)});
    CHECK(p.where(key(0, 0)) == Where::GHOST);

    CHECK(p.on_load(key(0, 0)));  // refault
    CHECK(p.where(key(0, 0)) == Where::AM);
    CHECK(p.refaults() == 1);
    CHECK(p.next_victim() == key(0, 2));  // A1in (2, 3, 4, 5) is above its target
    CHECK_FALSE(p.next_victim());
    CHECK(p.on_load(key(0, 1)));
    CHECK(p.next_victim() == key(0, 3));
    CHECK(p.on_load(key(0, 2)));
    CHECK(p.next_victim() == key(0, 4));
    CHECK(p.on_load(key(0, 3)));  // Am (0, 1, 2, 3), A1in (5): at its target
    CHECK(p.am_size() == 4);
    CHECK(p.next_victim() == key(0, 0));  // so Am's oldest goes
    CHECK(p.where(key(0, 0)) == Where::GHOST);
    CHECK(p.on_load(key(0, 0)));  // evicted from Am, it comes back to Am
    CHECK(p.next_victim() == key(0, 1));
    CHECK_FALSE(p.on_load(key(0, 0)));  // resident: nothing
    CHECK(p.refaults() == 5);
    CHECK(p.evictions() == 7);
    CHECK(p.where(key(0, 5)) == Where::A1IN);

    // The ghost list is a FIFO of the last `budget` victims: older keys load as new.
    for (std::uint64_t i = 100; i < 110; ++i) load(p, key(0, i));
    CHECK(p.ghost_size() == 4);
    CHECK(p.where(key(0, 1)) == Where::NONE);
    const auto refaults = p.refaults();
    CHECK_FALSE(p.on_load(key(0, 1)));
    CHECK(p.refaults() == refaults);
    CHECK(p.where(key(0, 1)) == Where::A1IN);
    CHECK(p.consistent());
}

TEST_CASE("eviction: a hot set survives a scan of 4x the budget, and beats FIFO", "[eviction]")
{
    constexpr std::uint64_t budget = 1024, hot = budget / 4, chunk = 64;
    constexpr std::uint32_t hot_cache = 1, scan_cache = 2;
    EvictionPolicy p(budget);
    Fifo fifo(budget);
    std::set<std::pair<std::uint32_t, std::uint64_t>> resident;  // as the policy's caller sees it
    std::uint64_t loads = 0, fifo_loads = 0, hot_loads = 0, fifo_hot_loads = 0;
    // A client touches page k: it faults when the page is not resident.
    auto touch = [&](PageKey k) {
        if (!resident.count({k.cache, k.page})) {
            ++loads;
            hot_loads += k.cache == hot_cache;
            p.on_load(k);
            resident.insert({k.cache, k.page});
            while (auto v = p.next_victim()) REQUIRE(resident.erase({v->cache, v->page}) == 1);
        }
        if (!fifo.resident(k)) {
            ++fifo_loads;
            fifo_hot_loads += k.cache == hot_cache;
            fifo.load(k);
        }
    };
    auto touch_hot = [&] {
        for (std::uint64_t h = 0; h < hot; ++h) touch(key(hot_cache, h));
    };
    touch_hot();
    for (std::uint64_t s = 0; s < 4 * budget; s += chunk) {
        for (std::uint64_t i = s; i < s + chunk; ++i) touch(key(scan_cache, i));
        touch_hot();
    }
    const std::uint64_t hot_refaults = hot_loads - hot, fifo_hot_refaults = fifo_hot_loads - hot;
    INFO("hot set " << hot << " pages, budget " << budget << ", scan " << 4 * budget << " pages in chunks of "
                    << chunk);
    INFO("hot reloads: 2Q " << hot_refaults << ", FIFO " << fifo_hot_refaults);
    INFO("all loads: 2Q " << loads << ", FIFO " << fifo_loads);
    CHECK(hot_refaults <= hot + hot / 16);  // each hot page evicted once, from A1in
    CHECK(fifo_hot_refaults >= 3 * hot);    // FIFO: once per budget's worth of scan
    CHECK(hot_refaults * 3 < fifo_hot_refaults);
    CHECK(loads < fifo_loads);
    CHECK(p.refaults() == hot_refaults);  // every reload was seen as a refault
    for (std::uint64_t h = 0; h < hot; ++h) REQUIRE(p.where(key(hot_cache, h)) == Where::AM);

    // Now the hot set is in Am: a scan of 4x the budget of new keys evicts from A1in only.
    const std::uint64_t am = p.am_size();
    for (std::uint64_t i = 0; i < 4 * budget; ++i) {
        p.on_load(key(3, i));
        while (auto v = p.next_victim()) {
            REQUIRE(v->cache != hot_cache);
            REQUIRE(p.where(*v) == Where::GHOST);
        }
        REQUIRE(p.am_size() == am);
    }
    for (std::uint64_t h = 0; h < hot; ++h) REQUIRE(p.where(key(hot_cache, h)) == Where::AM);
    CHECK(p.consistent());
}

TEST_CASE("eviction: on_drop and drop_cache forget pages", "[eviction]")
{
    EvictionPolicy p(10);
    for (std::uint64_t i = 0; i < 12; ++i) load(p, key(1, i));  // 0, 1 ghosts; 2..11 in A1in
    CHECK(p.on_load(key(1, 0)));                                 // refault: Am
    CHECK(p.next_victim() == key(1, 2));
    // Dropping a resident page: no ghost, one page fewer, never a victim.
    p.on_drop(key(1, 5));
    CHECK(p.where(key(1, 5)) == Where::NONE);
    CHECK(p.resident() == 9);
    CHECK_FALSE(p.next_victim());
    p.on_drop(key(1, 0));  // from Am
    CHECK(p.am_size() == 0);
    CHECK(p.resident() == 8);
    p.on_drop(key(1, 1));  // a ghost: stays one
    CHECK(p.where(key(1, 1)) == Where::GHOST);
    p.on_drop(key(9, 1));  // unknown: nothing
    p.on_drop(key(1, 999));
    CHECK(p.resident() == 8);
    CHECK(p.evictions() == 3);
    CHECK_FALSE(p.on_load(key(1, 5)));  // a dropped page loads as new
    CHECK(p.where(key(1, 5)) == Where::A1IN);
    p.on_drop(key(1, 5));
    CHECK(p.consistent());

    // Another cache's pages, then the first cache goes: resident, Am and ghost entries.
    for (std::uint64_t i = 0; i < 4; ++i) load(p, key(2, i));
    CHECK(p.on_load(key(1, 2)));  // a refault of cache 1 in Am
    CHECK(p.next_victim() == key(1, 6));
    CHECK_FALSE(p.next_victim());
    CHECK(p.resident() == 10);
    p.drop_cache(1);
    CHECK(p.resident() == 4);
    CHECK(p.a1in_size() == 4);
    CHECK(p.am_size() == 0);
    for (std::uint64_t i = 0; i < 12; ++i) CHECK(p.where(key(1, i)) == Where::NONE);
    for (std::uint64_t i = 0; i < 4; ++i) CHECK(p.where(key(2, i)) == Where::A1IN);
    CHECK(p.ghost_size() == 0);
    CHECK(p.consistent());
    CHECK_FALSE(p.on_load(key(1, 1)));  // was a ghost: no refault now
    p.on_drop(key(1, 1));
    p.drop_cache(1);
    p.drop_cache(77);
    // Over budget again: the victims are cache 2's (and new) pages only.
    for (std::uint64_t i = 100; i < 120; ++i)
        for (const PageKey& v : load(p, key(3, i))) CHECK(v.cache != 1);
    CHECK(p.resident() == 10);
    CHECK(p.consistent());
}

TEST_CASE("eviction: a smaller budget yields victims, oldest first, and trims the ghosts", "[eviction]")
{
    EvictionPolicy p(100);
    for (std::uint64_t i = 0; i < 200; ++i) load(p, key(4, i));
    CHECK(p.ghost_size() == 100);
    p.set_budget(40);
    CHECK(p.budget() == 40);
    CHECK(p.ghost_size() == 40);                              // the oldest ghosts went
    CHECK(p.where(key(4, 59)) == Where::NONE);
    CHECK(p.where(key(4, 60)) == Where::GHOST);
    for (std::uint64_t i = 100; i < 160; ++i) CHECK(p.next_victim() == key(4, i));
    CHECK_FALSE(p.next_victim());
    CHECK(p.resident() == 40);
    CHECK(p.ghost_size() == 40);
    CHECK(p.where(key(4, 159)) == Where::GHOST);
    CHECK(p.where(key(4, 119)) == Where::NONE);
    CHECK(p.consistent());

    p.set_budget(1000);  // growing evicts nothing
    CHECK_FALSE(p.next_victim());
    CHECK(p.resident() == 40);

    p.set_budget(0);  // nothing stays, nothing is remembered
    std::uint64_t n = 0;
    while (p.next_victim()) ++n;
    CHECK(n == 40);
    CHECK(p.resident() == 0);
    CHECK(p.ghost_size() == 0);
    CHECK(load(p, key(4, 1)) == std::vector{key(4, 1)});
    CHECK_FALSE(p.on_load(key(4, 1)));
    CHECK(p.consistent());
}

TEST_CASE("eviction: memory per page of budget, and given back", "[eviction]")
{
    constexpr std::uint64_t budget = 1 << 16;
    EvictionPolicy p(budget);
    const std::uint64_t empty = p.memory_bytes();
    std::uint64_t peak = 0;
    // Four caches, so that per-table overheads count too; a full cache plus a full ghost list.
    for (std::uint64_t i = 0; i < 4 * budget; ++i) {
        load(p, key(static_cast<std::uint32_t>(i % 4), i));
        if (i >= 2 * budget) peak = std::max(peak, p.memory_bytes());
    }
    CHECK(p.resident() == budget);
    CHECK(p.ghost_size() == budget);
    const double per_page = static_cast<double>(peak) / budget;
    INFO("bytes per page of budget, ghosts included: " << per_page << " (empty: " << empty << ")");
    CHECK(per_page <= 64.0);
    CHECK(p.consistent());
    for (std::uint32_t c = 0; c < 4; ++c) p.drop_cache(c);
    CHECK(p.resident() == 0);
    CHECK(p.memory_bytes() <= empty + 96 * 1024 + 4096);  // at most one spare chunk
    CHECK(p.consistent());
}

TEST_CASE("eviction: random operations match a reference implementation", "[eviction]")
{
    std::mt19937_64 rng(20240611);
    auto below = [&](std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng); };
    EvictionPolicy p(16);
    Reference ref(16);
    constexpr int ops = 100000, phase = 10000;
    std::uint64_t max_budget = 64, pages = 150;
    std::uint32_t caches = 3;
    bool big = false;
    std::uint64_t max_keys = 0;
    for (int op = 0; op < ops; ++op) {
        if (op % phase == 0) {
            // Small budgets and key spaces (edges, frequent refaults), or large ones (tables
            // that grow and shrink, pool chunks crossed and given back).
            big = (op / phase) % 3 == 2;
            max_budget = big ? 6000 : 64;
            pages = big ? 20000 : 150;
            caches = big ? 2 : 4;
            if (big) {
                p.set_budget(max_budget);
                ref.set_budget(max_budget);
            }
        }
        const PageKey k = key(static_cast<std::uint32_t>(below(caches)), below(pages));
        const std::uint64_t r = below(1000);
        INFO("op " << op << " r " << r << " key " << k.cache << ":" << k.page);
        // With many keys: more loads, budget changes and cache drops ten times rarer (and
        // the budget at least half the maximum), so that keys pile up past a chunk of the pool.
        const bool rare = !big || below(10) == 0;
        if (r < 550 || (big && r < 700)) {
            REQUIRE(p.on_load(k) == ref.on_load(k));
        } else if (r < 850) {
            REQUIRE(p.next_victim() == ref.next_victim());
        } else if (r < 900) {
            for (;;) {
                const auto v = p.next_victim();
                REQUIRE(v == ref.next_victim());
                if (!v) break;
            }
        } else if (r < 985) {
            p.on_drop(k);
            ref.on_drop(k);
        } else if (r < 997) {
            if (rare) {
                const std::uint64_t b = big ? max_budget / 2 + below(max_budget / 2 + 1) : below(max_budget + 1);
                p.set_budget(b);
                ref.set_budget(b);
            }
        } else if (rare) {
            p.drop_cache(k.cache);
            ref.drop_cache(k.cache);
        }
        REQUIRE(p.resident() == ref.resident());
        REQUIRE(p.a1in_size() == ref.size(0));
        REQUIRE(p.am_size() == ref.size(1));
        REQUIRE(p.ghost_size() == ref.size(2));
        REQUIRE(p.refaults() == ref.refaults);
        REQUIRE(p.evictions() == ref.evictions);
        REQUIRE(p.where(k) == ref.where(k));
        if (op % 997 == 0) REQUIRE(p.consistent());
        max_keys = std::max(max_keys, p.resident() + p.ghost_size());
    }
    CHECK(p.refaults() > 1000);  // the mix did exercise refaults
    CHECK(max_keys > 4096);      // and a second chunk of the pool
    CHECK(p.consistent());
}
