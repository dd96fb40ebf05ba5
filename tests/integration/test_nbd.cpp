// NBD stores, read paths: the real daemon reads exports of a real nbdkit (file plugin,
// over a Unix socket and over loopback TCP) and every byte a client sees is the file's.
// Also the figures of Connection::stores(). Failures, writes, the allow list and the zero
// store have files of their own (test_nbd_*.cpp).
#include <dirent.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "harness.hpp"
#include "nbdkit.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Prefetch;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;

libclient::Region map_or_fail(libclient::Connection& c, const std::string& uri, std::uint64_t offset,
                              std::uint64_t length, Access access = Access::ReadOnly,
                              Prefetch prefetch = Prefetch::Sequential)
{
    libclient::MapOptions o;
    o.offset = offset;
    o.length = length;
    o.access = access;
    o.prefetch = prefetch;
    auto r = c.map_store(uri, o);
    if (!r) FAIL("map_store " << uri << ": " << r.error().message);
    return r.value();
}

libclient::StoreInfo only_store(libclient::Connection& c)
{
    auto s = c.stores();
    if (!s) FAIL("stores: " << s.error().message);
    if (s->size() != 1) FAIL("expected one store, the daemon lists " << s->size());
    return s->at(0);
}

// Waits until the store's reads stay the same for a few polls (read-ahead in flight has
// landed), then returns its figures.
libclient::StoreInfo settled_store(libclient::Connection& c)
{
    auto last = only_store(c);
    int same = 0;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (same < 3 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(10ms);
        auto s = only_store(c);
        same = s.reads == last.reads && s.inflight == 0 ? same + 1 : 0;
        last = s;
    }
    return last;
}

std::string figures(const libclient::StoreInfo& s)
{
    return s.kind + " " + s.uri + ": size " + std::to_string(s.size) + ", connections " + std::to_string(s.connections) +
           ", inflight " + std::to_string(s.inflight) + ", reads " + std::to_string(s.reads) + ", read_bytes " +
           std::to_string(s.read_bytes) + ", read_errors " + std::to_string(s.read_errors) + ", retries " +
           std::to_string(s.retries) + ", timeouts " + std::to_string(s.timeouts) + ", reconnects " +
           std::to_string(s.reconnects) + ", writes " + std::to_string(s.writes) + ", latency avg " +
           std::to_string(s.read_latency_avg_ns) + " ns, max " + std::to_string(s.read_latency_max_ns) + " ns";
}

// What the process's descriptors are, one a line ("5 -> socket:[1234]").
std::string descriptors(pid_t pid)
{
    std::string out;
    const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            if (e->d_name[0] == '.') continue;
            char target[512] = {};
            const ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
            out += std::string(e->d_name) + " -> " + (n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?") + "\n";
        }
        ::closedir(d);
    }
    return out;
}

// The daemon's descriptors once the harness's probe connection has surely gone.
std::size_t settled_fds(const Daemon& d)
{
    std::size_t least = d.fd_count();
    for (int i = 0; i < 10; ++i) {
        std::this_thread::sleep_for(20ms);
        least = std::min(least, d.fd_count());
    }
    return least;
}

// The worker the daemon's log says it gave the client named `name` (-1: not found).
int worker_of(const std::string& log, const std::string& name)
{
    const auto hello = log.find("HELLO from '" + name + "'");
    if (hello == std::string::npos) return -1;
    const auto client = log.rfind("client ", hello);
    const std::string id = log.substr(client, log.find(':', client) - client);  // "client N"
    const auto line = log.find(id + " connected (");
    const auto at = log.find("on worker ", line);
    return line == std::string::npos || at == std::string::npos ? -1 : std::stoi(log.substr(at + 10));
}

std::string tail_of(const std::string& s, std::size_t n = 4000) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

}  // namespace

TEST_CASE("an NBD export over a Unix socket reads as the file it serves", "[nbd]")
{
    TempDir dir;
    const std::uint64_t size = 64ull << 20;
    make_pattern_file(dir.file("data"), size, 7);
    Nbdkit server("file", {dir.file("data")});
    Daemon d(allow(server));
    auto conn = d.connect();
    libclient::MapOptions o;
    o.length = size;
    auto r = conn->map_store(server.uri(), o);
    REQUIRE(r);
    const auto* p = static_cast<const std::uint8_t*>(r->addr);
    CHECK(pattern_mismatches(p, size, 0, 7) == 0);
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

TEST_CASE("a whole NBD region read in order: every byte the file's, each byte read from the server once",
          "[nbd][read]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 32 * k_mib;
    make_pattern_file(dir.file("data"), size, 101);
    Nbdkit server("file", {dir.file("data")}, transport);
    Daemon d(allow(server));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size);
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    CHECK(pattern_mismatches(p, size, 0, 101) == 0);
    const auto s = settled_store(*conn);
    INFO(figures(s));
    CHECK(s.read_bytes == size);
    CHECK(s.read_errors == 0);
    CHECK(s.retries == 0);
    CHECK(d.status().sigbus_faults == 0);
    // An offset into the export: the region's first byte is the export's byte there.
    const auto r2 = map_or_fail(*conn, server.uri(), 5 * k_mib, 2 * k_mib);
    CHECK(pattern_mismatches(r2.addr, 2 * k_mib, 5 * k_mib, 101) == 0);
    CHECK(conn->unmap(r2));
    CHECK(conn->unmap(r));
}

TEST_CASE("random pages of an NBD region (Prefetch::None): each the file's, only those pages read", "[nbd][read]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 64 * k_mib, pages = size / k_page;
    make_pattern_file(dir.file("data"), size, 103);
    Nbdkit server("file", {dir.file("data")}, transport);
    Daemon d(allow(server));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::ReadOnly, Prefetch::None);
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    std::mt19937_64 rng(42);
    std::set<std::uint64_t> touched;
    std::uint64_t bad_pages = 0;
    for (int i = 0; i < 3000; ++i) {
        const std::uint64_t pg = rng() % pages;
        touched.insert(pg);
        bad_pages += pattern_mismatches(p + pg * k_page, k_page, pg * k_page, 103) != 0;
    }
    CHECK(bad_pages == 0);
    const auto s = settled_store(*conn);
    INFO(figures(s) << "; distinct pages " << touched.size());
    // A page each fault: what was touched, no more (no read-ahead with Prefetch::None).
    CHECK(s.read_bytes == touched.size() * k_page);
    CHECK(s.read_errors == 0);
    CHECK(d.status().sigbus_faults == 0);
    CHECK(conn->unmap(r));
}

TEST_CASE("Prefetch::All loads a whole NBD region: reading it afterwards takes no fault", "[nbd][read][prefetch]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 32 * k_mib;
    make_pattern_file(dir.file("data"), size, 105);
    Nbdkit server("file", {dir.file("data")}, transport);
    Daemon d(allow(server));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::ReadOnly, Prefetch::All);
    auto w = conn->prefetch(r.addr, r.size, true, 20000);
    REQUIRE(w);
    const auto s1 = settled_store(*conn);
    const auto st1 = d.status();
    CHECK(pattern_mismatches(r.addr, size, 0, 105) == 0);
    const auto st2 = d.status();
    const auto s2 = settled_store(*conn);
    INFO(figures(s2));
    CHECK(s1.read_bytes == size);
    CHECK(st2.faults == st1.faults);
    CHECK(s2.read_bytes == s1.read_bytes);
    CHECK(conn->unmap(r));
}

TEST_CASE("two clients of one NBD export share one store and one cache: the second reads nothing from the server",
          "[nbd][read][share]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 32 * k_mib;
    make_pattern_file(dir.file("data"), size, 107);
    Nbdkit server("file", {dir.file("data")}, transport);
    Daemon d(allow(server));
    auto a = d.connect("first");
    auto b = d.connect("second");
    const auto ra = map_or_fail(*a, server.uri(), 0, size);
    CHECK(pattern_mismatches(ra.addr, size, 0, 107) == 0);
    const auto s1 = settled_store(*a);
    const auto st1 = d.status();
    const auto rb = map_or_fail(*b, server.uri(), 0, size, Access::ReadOnly, Prefetch::None);
    CHECK(pattern_mismatches(rb.addr, size, 0, 107) == 0);
    const auto s2 = settled_store(*b);  // one store for both: only_store() fails otherwise
    const auto st2 = d.status();
    INFO(figures(s1) << "\n" << figures(s2));
    CHECK(s1.read_bytes == size);
    CHECK(s2.read_bytes == s1.read_bytes);
    CHECK(s2.reads == s1.reads);
    CHECK(st2.cache_hits - st1.cache_hits >= size / k_page);
    CHECK(st2.cache_files == 1);
    auto caches = b->caches();
    REQUIRE(caches);
    REQUIRE(caches->size() == 1);
    CHECK(caches->at(0).clients == 2);
    CHECK(a->unmap(ra));
    CHECK(b->unmap(rb));
}

TEST_CASE("an NBD export whose size is not a page multiple: the last page's tail reads zeros, past it is PAST_EOF",
          "[nbd][read][eof]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 64 * k_mib + 100, rounded = 64 * k_mib + k_page;
    make_pattern_file(dir.file("data"), size, 109);
    Nbdkit server("file", {dir.file("data")}, transport);
    Daemon d(allow(server));
    auto conn = d.connect();
    // Past the last page: refused, whether by length or by offset.
    libclient::MapOptions o;
    o.length = rounded + k_page;
    auto past = conn->map_store(server.uri(), o);
    REQUIRE_FALSE(past);
    CHECK(past.error().is_daemon(proto::ErrorCode::PAST_EOF));
    o.offset = rounded;
    o.length = k_page;
    past = conn->map_store(server.uri(), o);
    REQUIRE_FALSE(past);
    CHECK(past.error().is_daemon(proto::ErrorCode::PAST_EOF));
    // Up to the last page: the export's bytes, then zeros.
    const auto r = map_or_fail(*conn, server.uri(), 0, rounded);
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    CHECK(pattern_mismatches(p, size, 0, 109) == 0);
    CHECK(nonzero_bytes(p + size, rounded - size) == 0);
    const auto s = settled_store(*conn);
    INFO(figures(s));
    CHECK(s.size == size);
    CHECK(s.read_bytes == size);  // the tail is not read: it is not there
    CHECK(s.read_errors == 0);
    CHECK(d.status().sigbus_faults == 0);
    // The last page alone, mapped at its own offset.
    const auto last = map_or_fail(*conn, server.uri(), 64 * k_mib, k_page, Access::ReadOnly, Prefetch::None);
    const auto* q = static_cast<const std::uint8_t*>(last.addr);
    CHECK(pattern_mismatches(q, 100, 64 * k_mib, 109) == 0);
    CHECK(nonzero_bytes(q + 100, k_page - 100) == 0);
    CHECK(conn->unmap(last));
    CHECK(conn->unmap(r));
}

TEST_CASE("an NBD export four times the cache budget reads right twice over: the cache evicts and reads again",
          "[nbd][read][eviction]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 64 * k_mib;
    make_pattern_file(dir.file("data"), size, 111);
    Nbdkit server("file", {dir.file("data")}, transport);
    Daemon d(allow(server, {"--memory-max", "8MiB"}));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size);
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    CHECK(pattern_mismatches(p, size, 0, 111) == 0);
    // The pages stay mapped in this process after the cache dropped them: drop ours too,
    // so that the second pass faults again.
    REQUIRE(::madvise(r.addr, size, MADV_DONTNEED) == 0);
    CHECK(pattern_mismatches(p, size, 0, 111) == 0);
    const auto s = settled_store(*conn);
    const auto st = d.status();
    INFO(figures(s) << "\ncache: budget " << st.cache_budget << ", bytes " << st.cache_bytes << ", evictions "
                    << st.cache_evictions << ", refaults " << st.cache_refaults);
    CHECK(st.cache_budget == 8 * k_mib);
    CHECK(st.cache_evictions > 0);
    CHECK(st.cache_bytes <= st.cache_budget);
    CHECK(s.read_bytes > size);  // the second pass read again what the first one's evictions dropped
    CHECK(s.read_errors == 0);
    CHECK(st.sigbus_faults == 0);
    CHECK(conn->unmap(r));
}

// ---- the figures of Connection::stores() ---------------------------------------------------

TEST_CASE("stores(): workers x --store-connections connections, nothing in flight when idle", "[nbd][stores]")
{
    TempDir dir;
    const std::uint64_t size = 32 * k_mib;
    make_pattern_file(dir.file("data"), size, 113);
    Nbdkit server("file", {dir.file("data")});
    const unsigned workers = 2, per_worker = 3;
    Daemon d(allow(server, {"--workers", std::to_string(workers), "--store-connections", std::to_string(per_worker)}));
    // Two clients: the daemon hands each to the least loaded worker, so both workers read.
    auto a = d.connect("a");
    auto b = d.connect("b");
    INFO("a on worker " << worker_of(d.log(), "a") << ", b on worker " << worker_of(d.log(), "b"));
    REQUIRE(worker_of(d.log(), "a") != worker_of(d.log(), "b"));
    const auto ra = map_or_fail(*a, server.uri(), 0, size / 2);
    const auto rb = map_or_fail(*b, server.uri(), size / 2, size / 2);
    std::uint64_t bad = 0;
    std::thread ta([&] { bad += pattern_mismatches(ra.addr, size / 2, 0, 113); });
    const std::uint64_t bad_b = pattern_mismatches(rb.addr, size / 2, size / 2, 113);
    ta.join();
    CHECK(bad + bad_b == 0);
    const auto s = settled_store(*a);
    INFO(figures(s) << "\npagerd log:\n" << tail_of(d.log()));
    CHECK(s.inflight == 0);
    CHECK(s.connections == workers * per_worker);  // both workers read, each through its channel
    CHECK(s.reads > 0);
    CHECK(s.read_bytes == size);
    CHECK(s.read_latency_avg_ns > 0);
    CHECK(s.read_latency_max_ns >= s.read_latency_avg_ns);
    CHECK(s.writes == 0);
    CHECK(s.write_bytes == 0);
    CHECK(a->unmap(ra));
    CHECK(b->unmap(rb));
    // No region maps it any more: the daemon lists it no more.
    auto left = a->stores();
    REQUIRE(left);
    CHECK(left->empty());
}

TEST_CASE("stores(): read latency shows a server's delay", "[nbd][stores][delay]")
{
    TempDir dir;
    const std::uint64_t size = 4 * k_mib;
    make_pattern_file(dir.file("data"), size, 115);
    Nbdkit server("file", {dir.file("data"), "delay-read=50ms"}, Nbdkit::Transport::Unix, {"delay"});
    Daemon d(allow(server));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size);
    CHECK(pattern_mismatches(r.addr, size, 0, 115) == 0);  // slow, and right
    const auto s = settled_store(*conn);
    INFO(figures(s));
    CHECK(s.read_bytes == size);
    CHECK(s.read_errors == 0);
    CHECK(s.timeouts == 0);
    CHECK(s.read_latency_avg_ns >= 45'000'000);
    CHECK(s.read_latency_max_ns >= s.read_latency_avg_ns);
    CHECK(s.inflight == 0);
    CHECK(conn->unmap(r));
}

// Each worker's channel makes all its --store-connections connections at its first read
// (until 196e41b only one ever was: reads went to the first ready connection).
TEST_CASE("with --store-connections N a worker with reads in flight on a slow server has N connections",
          "[nbd][stores][delay]")
{
    TempDir dir;
    const std::uint64_t size = 8 * k_mib, pages = size / k_page;
    make_pattern_file(dir.file("data"), size, 117);
    Nbdkit server("file", {dir.file("data"), "delay-read=200ms"}, Nbdkit::Transport::Unix, {"delay"});
    const unsigned per_worker = 3;
    Daemon d(allow(server, {"--workers", "1", "--store-connections", std::to_string(per_worker)}));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::ReadOnly, Prefetch::None);
    const auto* p = static_cast<const std::uint8_t*>(r.addr);
    // One fault first: the channel's first connection.
    CHECK(pattern_mismatches(p, k_page, 0, 117) == 0);
    // Then 8 threads, 4 faults each, on pages far apart: 8 reads in flight at a time, each
    // taking 200 ms.
    std::atomic<std::uint64_t> bad{0};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < 8; ++t)
        pool.emplace_back([&, t] {
            for (unsigned i = 0; i < 4; ++i) {
                const std::uint64_t pg = 1 + (t * 4 + i) * (pages / 40);
                bad += pattern_mismatches(p + pg * k_page, k_page, pg * k_page, 117);
            }
        });
    std::uint32_t most = 0;
    for (int i = 0; i < 60; ++i) {
        auto s = conn->stores();
        if (s && s->size() == 1) most = std::max(most, s->at(0).connections);
        std::this_thread::sleep_for(20ms);
    }
    for (auto& t : pool) t.join();
    const auto s = settled_store(*conn);
    INFO(figures(s) << "; most connections seen " << most);
    CHECK(bad == 0);
    CHECK(s.read_errors == 0);
    CHECK(most == per_worker);
    CHECK(s.connections == per_worker);
    CHECK(conn->unmap(r));
}

TEST_CASE("two clients' first maps of one export at the same time: one store, one cache", "[nbd][share][open]")
{
    TempDir dir;
    const std::uint64_t size = 8 * k_mib;
    make_pattern_file(dir.file("data"), size, 119);
    // Each connection takes 500 ms to open: both maps wait for the server together.
    Nbdkit server("file", {dir.file("data"), "delay-open=500ms"}, Nbdkit::Transport::Unix, {"delay"});
    Daemon d(allow(server, {"--workers", "2"}));
    auto a = d.connect("a");
    auto b = d.connect("b");
    std::optional<libclient::Region> ra, rb;
    std::string why_a, why_b;
    auto map = [&](libclient::Connection& c, std::optional<libclient::Region>& out, std::string& why) {
        libclient::MapOptions o;
        o.length = size;
        auto r = c.map_store(server.uri(), o);
        if (r)
            out = r.value();
        else
            why = r.error().message;
    };
    std::thread ta([&] { map(*a, ra, why_a); });
    map(*b, rb, why_b);
    ta.join();
    INFO(why_a << " / " << why_b);
    REQUIRE(ra);
    REQUIRE(rb);
    CHECK(pattern_mismatches(ra->addr, size, 0, 119) == 0);
    CHECK(pattern_mismatches(rb->addr, size, 0, 119) == 0);
    const auto s = settled_store(*a);  // fails unless exactly one store
    INFO(figures(s));
    CHECK(s.read_bytes == size);  // the second reader's pages came from the one cache
    auto caches = a->caches();
    REQUIRE(caches);
    REQUIRE(caches->size() == 1);
    CHECK(caches->at(0).clients == 2);
    CHECK(a->unmap(*ra));
    CHECK(b->unmap(*rb));
}

// The server's log (nbdkit's log filter): how many connections it saw made and closed.
struct ServerLog {
    std::size_t connects = 0, disconnects = 0;
};
ServerLog server_log(const std::string& path)
{
    const std::string text = slurp(path);
    auto count = [&](const std::string& w) {
        std::size_t n = 0;
        for (auto at = text.find(w); at != std::string::npos; at = text.find(w, at + 1)) ++n;
        return n;
    };
    return {count(" Connect "), count(" Disconnect ")};
}

// The server's log once every connection it saw made is closed, or after 3 s: it logs a
// close a moment after the daemon's close reaches it.
ServerLog settled_server_log(const std::string& path)
{
    auto log = server_log(path);
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
         log.connects != log.disconnects && std::chrono::steady_clock::now() < until; log = server_log(path))
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return log;
}

TEST_CASE("NBD regions mapped and unmapped again and again: right bytes, and every connection closed at the end",
          "[nbd][lifecycle]")
{
    const auto transport = GENERATE(Nbdkit::Transport::Unix, Nbdkit::Transport::Tcp);
    INFO("transport " << transport_name(transport));
    TempDir dir;
    const std::uint64_t size = 8 * k_mib;
    make_pattern_file(dir.file("data"), size, 121);
    Nbdkit server("file", {dir.file("data"), "logfile=" + dir.file("nbd.log")}, transport, {"log"});
    // One worker: the test below is the one about two workers reading one export.
    Daemon d(allow(server, {"--workers", "1"}));
    const std::size_t fds_at_start = settled_fds(d);
    const std::string fds_then = descriptors(d.pid());
    std::mt19937_64 rng(7);
    std::uint64_t bad = 0;
    for (int round = 0; round < 20; ++round) {
        auto conn = d.connect("round");
        const std::uint64_t off = (rng() % 8) * k_mib / 2;
        const auto r = map_or_fail(*conn, server.uri(), off, k_mib * 2 > size - off ? size - off : k_mib * 2,
                                   Access::ReadOnly, round % 2 ? Prefetch::None : Prefetch::Sequential);
        for (int i = 0; i < 64; ++i) {
            const std::uint64_t pg = rng() % (r.size / k_page);
            bad += pattern_mismatches(static_cast<const std::uint8_t*>(r.addr) + pg * k_page, k_page, off + pg * k_page,
                                      121);
        }
        CHECK(conn->unmap(r));
        // Sometimes the next map comes while this one's channel still closes, sometimes
        // after it closed (a worker looks every 200 ms at most).
        std::this_thread::sleep_for(std::chrono::milliseconds(round % 3 == 0 ? 0 : round % 3 == 1 ? rng() % 50 : 250));
    }
    CHECK(bad == 0);
    CHECK(d.status().sigbus_faults == 0);
    // No region maps the export any more: its connections close, and the daemon holds
    // what it held at the start.
    const bool closed = d.wait_fds_at_most(fds_at_start, std::chrono::seconds(5));
    const auto log = settled_server_log(dir.file("nbd.log"));
    INFO("server: " << log.connects << " connections made, " << log.disconnects << " closed\ndescriptors at the start "
                    << fds_at_start << ":\n" << fds_then << "now " << d.fd_count() << ":\n" << descriptors(d.pid())
                    << "pagerd log:\n" << tail_of(d.log()));
    CHECK(closed);
    CHECK(log.connects == log.disconnects);
    CHECK(log.connects > 0);
    CHECK(d.alive());
}

// Each worker's channel of an export holds a reference to the store: a channel must shut
// once only channels hold it (it shut only at use_count() == 1, so with channels on two
// workers neither ever closed).
TEST_CASE("an export read through two workers has its connections closed once nobody maps it",
          "[nbd][lifecycle]")
{
    TempDir dir;
    const std::uint64_t size = 8 * k_mib;
    make_pattern_file(dir.file("data"), size, 123);
    Nbdkit server("file", {dir.file("data"), "logfile=" + dir.file("nbd.log")}, Nbdkit::Transport::Unix, {"log"});
    Daemon d(allow(server, {"--workers", "2"}));
    const std::size_t fds_at_start = settled_fds(d);
    {
        // Two clients at once: the daemon hands them to its two workers.
        auto a = d.connect("a");
        auto b = d.connect("b");
        const std::string log = d.log();
        INFO("a on worker " << worker_of(log, "a") << ", b on worker " << worker_of(log, "b"));
        REQUIRE(worker_of(log, "a") >= 0);
        REQUIRE(worker_of(log, "b") >= 0);
        REQUIRE(worker_of(log, "a") != worker_of(log, "b"));
        // Prefetch::None, halves apart: each worker reads its own pages from the server.
        const auto ra = map_or_fail(*a, server.uri(), 0, size, Access::ReadOnly, Prefetch::None);
        const auto rb = map_or_fail(*b, server.uri(), 0, size, Access::ReadOnly, Prefetch::None);
        CHECK(pattern_mismatches(ra.addr, size / 2, 0, 123) == 0);
        CHECK(pattern_mismatches(static_cast<const std::uint8_t*>(rb.addr) + size / 2, size / 2, size / 2, 123) == 0);
        CHECK(a->unmap(ra));
        CHECK(b->unmap(rb));
    }
    const bool closed = d.wait_fds_at_most(fds_at_start, std::chrono::seconds(3));
    const auto log = settled_server_log(dir.file("nbd.log"));
    INFO("server: " << log.connects << " connections made, " << log.disconnects << " closed; daemon descriptors "
                    << fds_at_start << " at the start, now " << d.fd_count() << ":\n" << descriptors(d.pid())
                    << "pagerd log:\n" << tail_of(d.log()));
    REQUIRE(log.connects >= 3);  // the store's own, and at least one per worker's channel
    CHECK(closed);
    CHECK(log.connects == log.disconnects);
}
