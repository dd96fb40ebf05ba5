// NBD stores, writes: Shared regions of an nbdkit memory export. What a client writes
// reaches the server (NBD WRITE) at flush, at unmap, when the client dies, when the cache
// must drop written pages, and when the daemon stops; the server's own bytes are read back
// with nbdcopy, not through the daemon. A read-only export takes no Shared region.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
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
                              std::uint64_t length, Access access, Prefetch prefetch = Prefetch::Sequential)
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

// A whole file, at once (read_file() goes a byte at a time).
std::vector<std::uint8_t> read_fast(const std::string& path)
{
    std::vector<std::uint8_t> out;
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return out;
    std::uint8_t buf[1 << 16];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.insert(out.end(), buf, buf + n);
    std::fclose(f);
    return out;
}

// The export as the server holds it, read with nbdcopy (a client of its own).
std::vector<std::uint8_t> server_bytes(const std::string& uri, const TempDir& dir)
{
    const std::string out = dir.file("copy.img");
    ::unlink(out.c_str());
    const auto r = run_command({"/usr/bin/nbdcopy", uri, out});
    INFO("nbdcopy: " << r.out << r.err);
    REQUIRE(exited_with(r.status, 0));
    return read_fast(out);
}

void write_pattern(void* p, std::uint64_t len, std::uint64_t base, std::uint32_t seed)
{
    auto* b = static_cast<std::uint8_t*>(p);
    for (std::uint64_t i = 0; i < len; i += 8) {
        const std::uint64_t v = pattern_word((base + i) / 8, seed);
        std::memcpy(b + i, &v, 8);
    }
}

libclient::StoreInfo only_store(libclient::Connection& c)
{
    auto s = c.stores();
    if (!s) FAIL("stores: " << s.error().message);
    if (s->size() != 1) FAIL("expected one store, the daemon lists " << s->size());
    return s->at(0);
}

std::string figures(const libclient::StoreInfo& s)
{
    return s.uri + ": reads " + std::to_string(s.reads) + ", read_bytes " + std::to_string(s.read_bytes) +
           ", writes " + std::to_string(s.writes) + ", write_bytes " + std::to_string(s.write_bytes) +
           ", write_errors " + std::to_string(s.write_errors) + ", reconnects " + std::to_string(s.reconnects);
}

std::string tail_of(const std::string& s, std::size_t n = 4000) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

}  // namespace

TEST_CASE("a Shared NBD region: flushed writes are what the server holds, and a new map reads them back",
          "[nbd][write]")
{
    TempDir dir;
    const std::uint64_t size = 16 * k_mib, from = 1 * k_mib, len = 8 * k_mib;
    Nbdkit server("memory", {"16M"});
    Daemon d(allow(server));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::Shared);
    auto* p = static_cast<std::uint8_t*>(r.addr);
    CHECK(nonzero_bytes(p, size) == 0);  // a new memory export is all zeros
    write_pattern(p + from, len, from, 201);
    auto f = conn->flush(r);
    REQUIRE(f);
    CHECK(f->pages == len / k_page);
    CHECK(f->bytes == len);
    const auto s = only_store(*conn);
    INFO(figures(s));
    CHECK(s.write_bytes >= len);
    CHECK(s.writes > 0);
    CHECK(s.write_errors == 0);
    // What the server holds, read by another client: the pattern where written, zeros elsewhere.
    const auto held = server_bytes(server.uri(), dir);
    REQUIRE(held.size() == size);
    CHECK(nonzero_bytes(held.data(), from) == 0);
    CHECK(pattern_mismatches(held.data() + from, len, from, 201) == 0);
    CHECK(nonzero_bytes(held.data() + from + len, size - from - len) == 0);
    // A second flush has nothing to write.
    auto f2 = conn->flush(r);
    REQUIRE(f2);
    CHECK(f2->pages == 0);
    // Unmapped, the store closes with its cache; mapped again it reads from the server.
    const std::uint64_t read_before = only_store(*conn).read_bytes;
    CHECK(conn->unmap(r));
    auto none = conn->stores();
    REQUIRE(none);
    CHECK(none->empty());
    const auto again = map_or_fail(*conn, server.uri(), 0, size, Access::ReadOnly);
    const auto* a = static_cast<const std::uint8_t*>(again.addr);
    CHECK(nonzero_bytes(a, from) == 0);
    CHECK(pattern_mismatches(a + from, len, from, 201) == 0);
    CHECK(nonzero_bytes(a + from + len, size - from - len) == 0);
    // Read from the server, not from what the cache held before: a new store, or the same
    // one (the daemon may hold it a while after its last region) with its counters going on.
    const std::uint64_t read_after = only_store(*conn).read_bytes;
    INFO("read_bytes before the unmap " << read_before << ", after the new map's reads " << read_after);
    CHECK((read_after == size || read_after == read_before + size));
    CHECK(conn->unmap(again));
}

TEST_CASE("a Shared NBD region eight times the cache budget: every write reaches the server", "[nbd][write][eviction]")
{
    TempDir dir;
    const std::uint64_t size = 32 * k_mib;
    Nbdkit server("memory", {"64M"});
    Daemon d(allow(server, {"--memory-max", "8MiB"}));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::Shared);
    write_pattern(r.addr, size, 0, 203);
    // Before any flush: the cache could hold a quarter of it, so it has written pages back.
    const auto before = only_store(*conn);
    const auto st = d.status();
    INFO(figures(before) << "\ncache: budget " << st.cache_budget << ", bytes " << st.cache_bytes << ", evictions "
                         << st.cache_evictions << ", writebacks " << st.cache_writebacks << ", dirty "
                         << st.cache_dirty_bytes);
    CHECK(before.writes > 0);
    CHECK(st.cache_writebacks > 0);
    CHECK(st.cache_evictions > 0);
    CHECK(st.cache_bytes <= st.cache_budget);
    auto f = conn->flush(r);
    REQUIRE(f);
    const auto after = only_store(*conn);
    INFO(figures(after));
    CHECK(after.write_bytes >= size);
    CHECK(after.write_errors == 0);
    const auto held = server_bytes(server.uri(), dir);
    REQUIRE(held.size() == 64 * k_mib);
    CHECK(pattern_mismatches(held.data(), size, 0, 203) == 0);
    CHECK(nonzero_bytes(held.data() + size, held.size() - size) == 0);
    // And through the daemon: what it reads back (pages it dropped come from the server).
    CHECK(pattern_mismatches(r.addr, size, 0, 203) == 0);
    CHECK(d.status().sigbus_faults == 0);
    CHECK(conn->unmap(r));
}

TEST_CASE("writes to a Shared NBD region reach the server at unmap, when the client is killed, and at a stop",
          "[nbd][write][lifecycle]")
{
    TempDir dir;
    const std::uint64_t size = 8 * k_mib;
    Nbdkit server("memory", {"32M"});
    Daemon d(allow(server));
    StoreClient killed;  // forked before this process connects (harness.hpp)
    auto conn = d.connect();

    // Unmap without a flush: the pages are written first.
    {
        const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::Shared);
        write_pattern(r.addr, size, 0, 205);
        CHECK(conn->unmap(r));
        const auto held = server_bytes(server.uri(), dir);
        CHECK(pattern_mismatches(held.data(), size, 0, 205) == 0);
    }
    // A client killed after writing: the daemon writes its pages back (uffd-wp tracking
    // put them in the daemon's cache at once).
    {
        REQUIRE(killed.ask("connect " + d.socket()) == "ok");
        REQUIRE(killed.ask("map " + server.uri() + " " + std::to_string(8 * k_mib) + " " + std::to_string(size) +
                           " sh seq") == "ok 0");
        REQUIRE(killed.ask("write 0 0 " + std::to_string(size) + " 207") == "ok");
        ::kill(killed.pid(), SIGKILL);
        CHECK(WIFSIGNALED(killed.wait()));
        // Its region gone, the store closes once its pages are written.
        bool written = false;
        for (int i = 0; i < 200 && !written; ++i) {
            const auto held = server_bytes(server.uri(), dir);
            written = pattern_mismatches(held.data() + 8 * k_mib, size, 8 * k_mib, 207) == 0;
            if (!written) std::this_thread::sleep_for(50ms);
        }
        INFO("pagerd log:\n" << tail_of(d.log()));
        CHECK(written);
    }
    // A stop (SIGTERM) with written pages not yet flushed: written before the daemon exits.
    {
        const auto r = map_or_fail(*conn, server.uri(), 16 * k_mib, size, Access::Shared);
        write_pattern(r.addr, size, 16 * k_mib, 209);
        const auto dirty = d.status().cache_dirty_bytes;
        CHECK(dirty > 0);
        CHECK(exited_with(d.stop(), 0));
        const auto held = server_bytes(server.uri(), dir);
        CHECK(pattern_mismatches(held.data() + 16 * k_mib, size, 16 * k_mib, 209) == 0);
        // The earlier writes are still there.
        CHECK(pattern_mismatches(held.data(), size, 0, 205) == 0);
        CHECK(pattern_mismatches(held.data() + 8 * k_mib, size, 8 * k_mib, 207) == 0);
    }
}

TEST_CASE("a read-only NBD export takes no Shared region (BAD_DESCRIPTOR), and reads as ever", "[nbd][write][readonly]")
{
    TempDir dir;
    const std::uint64_t size = 4 * k_mib;
    make_pattern_file(dir.file("data"), size, 211);
    const auto before = read_fast(dir.file("data"));
    for (const bool memory : {false, true}) {
        INFO((memory ? "nbdkit -r memory" : "nbdkit -r file"));
        Nbdkit server(memory ? "memory" : "file", {memory ? "4M" : dir.file("data")}, Nbdkit::Transport::Unix, {},
                      {"-r"});
        Daemon d(allow(server));
        auto conn = d.connect();
        libclient::MapOptions o;
        o.length = size;
        o.access = Access::Shared;
        auto shared = conn->map_store(server.uri(), o);
        REQUIRE_FALSE(shared);
        INFO(shared.error().message);
        CHECK(shared.error().is_daemon(proto::ErrorCode::BAD_DESCRIPTOR));
        // ReadOnly and PrivateWritable regions of it are fine, and private writes stay private.
        const auto ro = map_or_fail(*conn, server.uri(), 0, size, Access::ReadOnly);
        const auto pw = map_or_fail(*conn, server.uri(), 0, size, Access::PrivateWritable);
        auto* q = static_cast<std::uint8_t*>(pw.addr);
        std::memset(q + 4096, 0xAB, 4096);
        if (memory) {
            CHECK(nonzero_bytes(ro.addr, size) == 0);
        } else {
            CHECK(pattern_mismatches(ro.addr, size, 0, 211) == 0);
            CHECK(pattern_mismatches(q, 4096, 0, 211) == 0);
        }
        CHECK(q[4096] == 0xAB);
        CHECK(q[8191] == 0xAB);
        CHECK(only_store(*conn).writes == 0);
        CHECK(conn->unmap(pw));
        CHECK(conn->unmap(ro));
    }
    CHECK(read_fast(dir.file("data")) == before);
}

TEST_CASE("two clients of one NBD export, one writing Shared: the other sees the writes at once", "[nbd][write][share]")
{
    TempDir dir;
    const std::uint64_t size = 4 * k_mib;
    Nbdkit server("memory", {"4M"});
    Daemon d(allow(server));
    auto writer = d.connect("writer");
    auto reader = d.connect("reader");
    const auto w = map_or_fail(*writer, server.uri(), 0, size, Access::Shared);
    const auto r = map_or_fail(*reader, server.uri(), 0, size, Access::ReadOnly);
    CHECK(nonzero_bytes(r.addr, size) == 0);  // loaded before the writes
    write_pattern(w.addr, size, 0, 213);
    // No flush: one cache, so the reader's pages are the writer's.
    CHECK(pattern_mismatches(r.addr, size, 0, 213) == 0);
    auto stores = reader->stores();
    REQUIRE(stores);
    CHECK(stores->size() == 1);
    CHECK(writer->unmap(w));
    CHECK(pattern_mismatches(r.addr, size, 0, 213) == 0);
    CHECK(reader->unmap(r));
    const auto held = server_bytes(server.uri(), dir);
    CHECK(pattern_mismatches(held.data(), size, 0, 213) == 0);
}

TEST_CASE("flush of a Shared NBD region while the server is gone fails and once it is back the same pages are written",
          "[nbd][write][failure]")
{
    TempDir dir;
    const std::uint64_t size = 4 * k_mib;
    // A file, so that the server's bytes outlive its restart.
    {
        std::FILE* f = std::fopen(dir.file("disk").c_str(), "wb");
        REQUIRE(f);
        REQUIRE(::ftruncate(::fileno(f), static_cast<off_t>(size)) == 0);
        std::fclose(f);
    }
    Nbdkit server("file", {dir.file("disk")});
    Daemon d(allow(server, {"--store-timeout-ms", "1000"}));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::Shared);
    write_pattern(r.addr, size / 2, 0, 215);
    // The second half is written while the server is gone: its pages must be in the cache
    // before (read-ahead usually has them by now; on a busy machine not always, and a write
    // to a page nobody could read raised SIGBUS in the test itself).
    const auto* second = static_cast<const volatile std::uint8_t*>(r.addr) + size / 2;
    for (std::uint64_t off = 0; off < size / 2; off += k_page) (void)second[off];
    server.kill_hard();
    auto failed = conn->flush(r);
    INFO((failed ? "flush said it wrote " + std::to_string(failed->pages) + " pages" : failed.error().message));
    CHECK_FALSE(failed);
    CHECK(d.status().cache_dirty_bytes >= size / 2);  // kept, to be written later
    // More writes meanwhile, then the server is back.
    write_pattern(static_cast<std::uint8_t*>(r.addr) + size / 2, size / 2, size / 2, 215);
    server.restart();
    auto f = conn->flush(r);
    REQUIRE(f);
    CHECK(f->pages == size / k_page);
    CHECK(d.status().cache_dirty_bytes == 0);
    const auto held = read_fast(dir.file("disk"));
    CHECK(pattern_mismatches(held.data(), size, 0, 215) == 0);
    const auto s = only_store(*conn);
    INFO(figures(s));
    CHECK(s.write_errors > 0);
    CHECK(s.reconnects > 0);
    CHECK(conn->unmap(r));
}

TEST_CASE("a stop with unwritten Shared NBD pages while the server is gone ends anyway", "[nbd][write][failure]")
{
    const std::uint64_t size = 4 * k_mib;
    Nbdkit server("memory", {"4M"});
    Daemon d(allow(server, {"--store-timeout-ms", "1000"}));
    auto conn = d.connect();
    const auto r = map_or_fail(*conn, server.uri(), 0, size, Access::Shared);
    write_pattern(r.addr, size, 0, 217);
    server.kill_hard();
    const auto t0 = std::chrono::steady_clock::now();
    const int st = d.stop();  // fails the test if it takes more than 15 s
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO("the daemon " << describe_status(st) << " after " << took << " s; its log:\n" << tail_of(d.log()));
    CHECK(WIFEXITED(st));
    CHECK(took < 10.0);
    CHECK(d.log().find("could not be written back") != std::string::npos);  // said, not lost in silence
}
