// Bytes through pagerd equal the file: sequential, random, many threads, many clients,
// partial last pages, system calls on unloaded memory, copy-on-write regions.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "harness.hpp"

using namespace pagerd;
using namespace pagerd::test;
using libclient::Access;

namespace {

constexpr std::uint64_t k_page = 4096;

std::uint64_t round_up(std::uint64_t n) { return (n + k_page - 1) / k_page * k_page; }

// Touches every page of [base, base+len) from `threads` threads in the given order.
void touch_pages(const volatile std::uint8_t* base, std::uint64_t len, unsigned threads, bool random)
{
    std::vector<std::uint64_t> order(len / k_page);
    std::iota(order.begin(), order.end(), 0);
    if (random) std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (std::size_t i = t; i < order.size(); i += threads) (void)base[order[i] * k_page + (i % k_page)];
        });
    for (auto& th : pool) th.join();
}

}  // namespace

TEST_CASE("sequential and random access from many threads see the file's bytes", "[read]")
{
    TempDir dir;
    const std::uint64_t size = 24 * 1024 * 1024;
    make_file(dir.file("data"), size, 7);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    for (bool random : {false, true}) {
        for (unsigned threads : {1u, 8u}) {
            INFO("random " << random << ", threads " << threads);
            auto r = conn->map_file(dir.file("data"), {0, size, Access::ReadOnly});
            REQUIRE(r.ok());
            touch_pages(static_cast<const std::uint8_t*>(r->addr), size, threads, random);
            REQUIRE(std::memcmp(r->addr, expect.data(), size) == 0);
            REQUIRE(conn->unmap(r.value()).ok());
        }
    }
    const auto s = daemon.status();
    CHECK(s.faults > 0);
    CHECK(s.bytes_read >= 4 * size);
    CHECK(s.latency_max_ns >= s.latency_p99_ns);
    CHECK(s.latency_p99_ns >= s.latency_p50_ns);
    CHECK(s.latency_p50_ns > 0);
}

TEST_CASE("nothing is read before the first touch, and each touch loads its own page", "[read]")
{
    TempDir dir;
    const std::uint64_t size = 64 * 1024 * 1024;
    make_file(dir.file("data"), size, 3);
    Daemon daemon;
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("data"), {0, size, Access::ReadOnly});
    REQUIRE(r.ok());
    const auto before = daemon.status();
    CHECK(before.bytes_read == 0);
    const auto* p = static_cast<const std::uint8_t*>(r->addr);
    const std::uint64_t at = 40 * 1024 * 1024 + 12345;
    CHECK(p[at] == pattern_byte(at, 3));
    const auto after = daemon.status();
    CHECK(after.faults == 1);
    CHECK(after.bytes_read > 0);
    CHECK(after.bytes_read <= 2 * 1024 * 1024);  // one block, not the file
}

TEST_CASE("a file that is not a multiple of the page size: exact bytes, zeros in the tail", "[read]")
{
    TempDir dir;
    for (std::uint64_t size : {std::uint64_t{1}, std::uint64_t{4095}, std::uint64_t{4097},
                               std::uint64_t{3 * 65536 + 17}, std::uint64_t{1000003}}) {
        INFO("file size " << size);
        make_file(dir.file("odd"), size, static_cast<std::uint32_t>(size));
        const auto expect = read_file(dir.file("odd"));
        Daemon daemon;
        auto conn = daemon.connect();
        auto r = conn->map_file(dir.file("odd"), {0, round_up(size), Access::ReadOnly});
        REQUIRE(r.ok());
        const auto* p = static_cast<const std::uint8_t*>(r->addr);
        touch_pages(p, round_up(size), 3, true);
        REQUIRE(std::memcmp(p, expect.data(), size) == 0);
        for (std::uint64_t i = size; i < round_up(size); ++i) REQUIRE(p[i] == 0);
        // One page more than the file holds is refused.
        auto past = conn->map_file(dir.file("odd"), {0, round_up(size) + k_page, Access::ReadOnly});
        REQUIRE_FALSE(past.ok());
        CHECK_THAT(past.error().message, Catch::Contains("past the end of the file"));
    }
}

TEST_CASE("regions at file offsets, several at once on one connection", "[read]")
{
    TempDir dir;
    const std::uint64_t size = 8 * 1024 * 1024;
    make_file(dir.file("data"), size, 11);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    std::vector<libclient::Region> regions;
    for (std::uint64_t i = 0; i < 16; ++i) {
        auto r = conn->map_file(dir.file("data"), {i * 65536 * 7, 65536 * 3, Access::ReadOnly});
        REQUIRE(r.ok());
        regions.push_back(r.value());
    }
    CHECK(daemon.status().regions == 16);
    std::vector<std::thread> pool;
    for (std::size_t i = 0; i < regions.size(); ++i)
        pool.emplace_back([&, i] { touch_pages(static_cast<const std::uint8_t*>(regions[i].addr), regions[i].size, 1, true); });
    for (auto& t : pool) t.join();
    for (std::size_t i = 0; i < regions.size(); ++i)
        REQUIRE(std::memcmp(regions[i].addr, expect.data() + i * 65536 * 7, 65536 * 3) == 0);
    for (auto& r : regions) REQUIRE(conn->unmap(r).ok());
    CHECK(daemon.wait_until([](const auto& s) { return s.regions == 0; }));
}

TEST_CASE("many clients at once: concurrent pagerctl cat processes", "[read][clients]")
{
    TempDir dir;
    const std::uint64_t size = 6 * 1024 * 1024 + 333;
    make_file(dir.file("data"), size, 5);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    const std::string bin = PAGERCTL_BINARY;
    std::vector<std::thread> pool;
    std::vector<CommandResult> results(8);
    for (std::size_t i = 0; i < results.size(); ++i)
        pool.emplace_back([&, i] {
            results[i] = run_command({bin, "--socket", daemon.socket(), "cat", dir.file("data"), "--pattern",
                                      i % 2 ? "random" : "seq", "--threads", std::to_string(1 + i % 4)});
        });
    for (auto& t : pool) t.join();
    for (const auto& r : results) {
        INFO(r.err);
        REQUIRE(exited_with(r.status, 0));
        REQUIRE(r.out.size() == size);
        REQUIRE(std::memcmp(r.out.data(), expect.data(), size) == 0);
    }
    CHECK(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0; }));
}

TEST_CASE("pagerctl cat writes a byte range that cmp can check", "[read][pagerctl]")
{
    TempDir dir;
    make_file(dir.file("data"), 300000, 9);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    auto r = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "cat", dir.file("data"), "--offset",
                          "5000", "--length", "77777", "--pattern", "random", "--threads", "4"});
    INFO(r.err);
    REQUIRE(exited_with(r.status, 0));
    REQUIRE(r.out == std::string(expect.begin() + 5000, expect.begin() + 5000 + 77777));
    auto missing = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "cat", dir.file("nope")});
    CHECK(exited_with(missing.status, 1));
    CHECK_THAT(missing.err, Catch::Contains("cannot open"));
}

TEST_CASE("read(2) and write(2) with unloaded region memory", "[read][syscalls]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 21);
    make_file(dir.file("other"), size, 22);
    const auto data = read_file(dir.file("data"));
    const auto other = read_file(dir.file("other"));
    Daemon daemon;
    auto conn = daemon.connect();
    REQUIRE_FALSE(conn->user_mode_only());

    // write(2) from unloaded read-only region memory into a file: the kernel's copy faults.
    auto ro = conn->map_file(dir.file("data"), {0, size, Access::ReadOnly});
    REQUIRE(ro.ok());
    const int out = ::open(dir.file("copy").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(::write(out, ro->addr, size) == static_cast<ssize_t>(size));
    ::close(out);
    CHECK(read_file(dir.file("copy")) == data);

    // read(2) into unloaded private-writable memory: the page is loaded, then overwritten.
    auto rw = conn->map_file(dir.file("data"), {0, size, Access::PrivateWritable});
    REQUIRE(rw.ok());
    const int in = ::open(dir.file("other").c_str(), O_RDONLY);
    auto* p = static_cast<std::uint8_t*>(rw->addr);
    REQUIRE(::pread(in, p + 100, 5000, 0) == 5000);
    ::close(in);
    CHECK(std::memcmp(p, data.data(), 100) == 0);                  // before: file bytes
    CHECK(std::memcmp(p + 100, other.data(), 5000) == 0);          // read(2) landed
    CHECK(std::memcmp(p + 5100, data.data() + 5100, 8192) == 0);  // after: file bytes
    CHECK(daemon.status().this_client_user_mode_only == false);
}

TEST_CASE("private writable regions are copy-on-write: the file never changes", "[read][cow]")
{
    TempDir dir;
    const std::uint64_t size = 512 * 1024;
    make_file(dir.file("data"), size, 31);
    const auto data = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    auto rw = conn->map_file(dir.file("data"), {0, size, Access::PrivateWritable});
    REQUIRE(rw.ok());
    auto* p = static_cast<std::uint8_t*>(rw->addr);
    p[70000] = static_cast<std::uint8_t>(~data[70000]);  // first touch is a write
    CHECK(p[70001] == data[70001]);                       // the rest of the page came from the file
    std::memset(p + 200000, 0xAB, 10000);
    CHECK(p[200000 + 9999] == 0xAB);
    CHECK(p[210000] == data[210000]);
    REQUIRE(conn->unmap(rw.value()).ok());
    CHECK(read_file(dir.file("data")) == data);
    // A read-only region refuses writes like PROT_READ memory does.
    auto ro = conn->map_file(dir.file("data"), {0, size, Access::ReadOnly});
    REQUIRE(ro.ok());
    const int st = run_child([&] {
        static_cast<volatile std::uint8_t*>(ro->addr)[10] = 1;
        return 0;
    });
    CHECK(killed_by(st, SIGSEGV));
}

TEST_CASE("madvise(MADV_DONTNEED) drops pages and the next touch loads them again", "[read][events]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 41);
    const auto data = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    auto rw = conn->map_file(dir.file("data"), {0, size, Access::PrivateWritable});
    REQUIRE(rw.ok());
    auto* p = static_cast<std::uint8_t*>(rw->addr);
    std::memset(p, 0, size);  // private writes everywhere
    REQUIRE(::madvise(p, size, MADV_DONTNEED) == 0);
    CHECK(std::memcmp(p, data.data(), size) == 0);  // back to the file's bytes, like mmap
}

TEST_CASE("mremap moves a region and the daemon follows it", "[read][events]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 43);
    const auto data = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("data"), {0, size, Access::ReadOnly});
    REQUIRE(r.ok());
    void* moved = ::mremap(r->addr, size, size, MREMAP_MAYMOVE | MREMAP_FIXED,
                           static_cast<char*>(::mmap(nullptr, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) + size);
    REQUIRE(moved != MAP_FAILED);
    CHECK(std::memcmp(moved, data.data(), size) == 0);
    ::munmap(moved, size);
    CHECK(daemon.wait_until([](const auto& s) { return s.regions == 0; }));
}

TEST_CASE("pages past the end of a file that shrank raise SIGBUS, like mmap", "[read][sigbus]")
{
    TempDir dir;
    const std::uint64_t size = 1024 * 1024;
    make_file(dir.file("data"), size, 61);
    const auto data = read_file(dir.file("data"));
    Daemon daemon;
    auto conn = daemon.connect();
    auto r = conn->map_file(dir.file("data"), {0, size, Access::ReadOnly});
    REQUIRE(r.ok());
    REQUIRE(::truncate(dir.file("data").c_str(), 100000) == 0);
    const auto* p = static_cast<const volatile std::uint8_t*>(r->addr);
    CHECK(p[99999] == data[99999]);  // inside the file
    CHECK(p[100000] == 0);            // tail of the last partial page
    CHECK(p[102399] == 0);
    const int st = run_child([&] {  // a forked child has the region: past EOF is SIGBUS there too
        reset_fatal_signals();
        return p[500000];
    });
    CHECK(killed_by(st, SIGBUS));
    // In a process whose own threads fault, past EOF is SIGBUS. A program of its own (it
    // maps the first 100 KiB, truncates the file to 4 KiB and touches offset 50000): a
    // child forked from this process, whose connection runs a thread, could not start the
    // thread of a connection of its own under ThreadSanitizer.
    const auto child = run_command({PAGERD_TEST_CHILD, "sigbus-past-eof", daemon.socket(), dir.file("data")});
    INFO(child.err);
    // SIGBUS at the touched address, with mmap's si_code for a page past EOF.
    CHECK(exited_with(child.status, 50));
    CHECK(daemon.status().sigbus_faults >= 1);
}

namespace {

// ---- reading `pagerctl status` and `pagerctl status --json` ----------------------------

// The number after `"key":` in a flat JSON object (fails the test if absent).
std::uint64_t json_u64(const std::string& obj, const std::string& key)
{
    const std::string k = "\"" + key + "\":";
    const auto at = obj.find(k);
    INFO("key " << key << " in " << obj);
    REQUIRE(at != std::string::npos);
    const auto start = at + k.size();
    const auto end = obj.find_first_not_of("0123456789", start);
    REQUIRE(end != std::string::npos);
    REQUIRE(end > start);
    return std::stoull(obj.substr(start, end - start));
}

// The array of numbers after `"key":` (fails the test if absent or not an array).
std::vector<std::uint64_t> json_u64_array(const std::string& obj, const std::string& key)
{
    const std::string k = "\"" + key + "\":[";
    const auto at = obj.find(k);
    INFO("key " << key << " in " << obj);
    REQUIRE(at != std::string::npos);
    const auto end = obj.find(']', at);
    REQUIRE(end != std::string::npos);
    std::vector<std::uint64_t> out;
    std::string item;
    for (std::size_t i = at + k.size(); i <= end; ++i) {
        const char c = obj[i];
        if (c == ',' || c == ']') {
            REQUIRE_FALSE(item.empty());
            REQUIRE(item.find_first_not_of("0123456789") == std::string::npos);
            out.push_back(std::stoull(item));
            item.clear();
        } else {
            item += c;
        }
    }
    return out;
}

// The object of region `id` in the `region_list` of `pagerctl status --json`.
std::string json_region(const std::string& out, std::uint64_t id)
{
    const auto list = out.find("\"region_list\":[");
    REQUIRE(list != std::string::npos);
    const auto at = out.find(",\"id\":" + std::to_string(id) + ",", list);
    INFO("region " << id << " in " << out);
    REQUIRE(at != std::string::npos);
    const auto begin = out.rfind('{', at);
    const auto end = out.find('}', at);
    REQUIRE(begin != std::string::npos);
    REQUIRE(end != std::string::npos);
    return out.substr(begin, end - begin + 1);
}

std::vector<std::string> lines_of(const std::string& text)
{
    std::vector<std::string> out;
    std::string line;
    for (const char c : text) {
        if (c == '\n') {
            out.push_back(line);
            line.clear();
        } else {
            line += c;
        }
    }
    if (!line.empty()) out.push_back(line);
    return out;
}

std::vector<std::string> words_of(const std::string& line)
{
    std::vector<std::string> out;
    std::string w;
    for (const char c : line + " ") {
        if (c == ' ') {
            if (!w.empty()) out.push_back(w);
            w.clear();
        } else {
            w += c;
        }
    }
    return out;
}

// The label pagerctl gives latency bucket i: "<2µs", "2-4µs", ..., ">=32.8ms" (bucket i
// is [2^i, 2^(i+1)) µs, bucket 15 32768 µs and more).
std::string bucket_label(std::size_t i)
{
    const auto us = [](std::uint64_t v) {
        char buf[32];
        if (v < 1000) std::snprintf(buf, sizeof buf, "%lluµs", static_cast<unsigned long long>(v));
        else std::snprintf(buf, sizeof buf, "%.1fms", static_cast<double>(v) / 1000);
        return std::string(buf);
    };
    if (i == 0) return "<2µs";
    if (i == 15) return ">=" + us(32768);
    const std::uint64_t lo = std::uint64_t{1} << i, hi = lo * 2;
    if (hi < 1000) return std::to_string(lo) + "-" + us(hi);
    if (lo < 1000) return us(lo) + "-" + us(hi);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f-%.1fms", static_cast<double>(lo) / 1000, static_cast<double>(hi) / 1000);
    return buf;
}

std::uint64_t sum(const std::vector<std::uint64_t>& v) { return std::accumulate(v.begin(), v.end(), std::uint64_t{0}); }
std::uint64_t sum(const libclient::LatencyHistogram& h) { return std::accumulate(h.begin(), h.end(), std::uint64_t{0}); }

}  // namespace

TEST_CASE("pagerctl status shows the latency histogram, and each region's prefetch policy and faults",
          "[read][pagerctl][status]")
{
    using libclient::Prefetch;
    constexpr std::uint64_t block = 65536;
    TempDir dir;
    const std::uint64_t size_none = 4 * 1024 * 1024, size_seq = 8 * 1024 * 1024;
    make_file(dir.file("data"), size_none + size_seq, 71);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon({"--fault-block", std::to_string(block)});
    auto conn = daemon.connect();

    libclient::MapOptions o_none{0, size_none, Access::ReadOnly};
    o_none.prefetch = Prefetch::None;
    auto none = conn->map_file(dir.file("data"), o_none);
    REQUIRE(none.ok());
    libclient::MapOptions o_seq{size_none, size_seq, Access::ReadOnly};  // prefetch: the default
    auto seq = conn->map_file(dir.file("data"), o_seq);
    REQUIRE(seq.ok());
    // Every page of both: the NONE region in random order from 4 threads, the default
    // (sequential) one front to back from one thread.
    touch_pages(static_cast<const std::uint8_t*>(none->addr), size_none, 4, true);
    touch_pages(static_cast<const std::uint8_t*>(seq->addr), size_seq, 1, false);
    REQUIRE(std::memcmp(none->addr, expect.data(), size_none) == 0);
    REQUIRE(std::memcmp(seq->addr, expect.data() + size_none, size_seq) == 0);

    // The daemon's counters follow the faults it served; give them a moment to settle.
    const auto settled = [&] {
        auto list = conn->regions();
        if (!list) return false;
        int ok = 0;
        std::uint64_t region_faults = 0;
        for (const auto& r : *list)
            if ((r.id == none->id || r.id == seq->id) && r.faults > 0 && sum(r.latency_histogram) >= r.faults) {
                ++ok;
                region_faults += r.faults;
            }
        auto s = conn->status();
        return ok == 2 && s && s->faults >= region_faults && sum(s->latency_histogram) >= s->faults;
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!settled() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));

    // ---- --json ----
    auto json = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status", "--json"});
    INFO(json.err);
    REQUIRE(exited_with(json.status, 0));
    INFO(json.out);
    const std::string& js = json.out;
    const auto global = json_u64_array(js, "latency_histogram");  // the first one: daemon-wide
    REQUIRE(js.find("\"latency_histogram\":[") < js.find("\"region_list\":["));
    REQUIRE(global.size() == 16);
    const std::uint64_t faults = json_u64(js, "faults");
    CHECK(faults > 0);
    CHECK(sum(global) >= faults);
    // A sequential pass over 8 MiB: read-ahead installs pages before they are touched.
    CHECK(json_u64(js, "pages_prefetched") > 0);

    const std::string rn = json_region(js, none->id), rs = json_region(js, seq->id);
    CHECK_THAT(rn, Catch::Contains("\"prefetch\":\"none\""));
    CHECK_THAT(rs, Catch::Contains("\"prefetch\":\"sequential\""));
    std::uint64_t region_faults = 0;
    for (const auto& [obj, size] : {std::pair{rn, size_none}, std::pair{rs, size_seq}}) {
        INFO(obj);
        const auto f = json_u64(obj, "faults");
        const auto hist = json_u64_array(obj, "latency_histogram");
        REQUIRE(hist.size() == 16);
        CHECK(f > 0);
        CHECK(f <= size / 4096);  // at most one fault per page: each loads the page for good
        CHECK(sum(hist) >= f);
        const auto p50 = json_u64(obj, "latency_p50_ns"), p99 = json_u64(obj, "latency_p99_ns");
        CHECK(p50 > 0);
        CHECK(p99 >= p50);
        CHECK(json_u64(obj, "prefetch_pending") == 0);  // no ALL fill, no PREFETCH request
        for (std::size_t i = 0; i < 16; ++i) CHECK(hist[i] <= global[i]);
        region_faults += f;
    }
    CHECK(faults >= region_faults);
    // NONE loads the faulting block only: covering 4 MiB takes a fault per 64 KiB block.
    CHECK(json_u64(rn, "faults") >= size_none / block);

    // ---- text ----
    auto text = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "status"});
    INFO(text.err);
    REQUIRE(exited_with(text.status, 0));
    INFO(text.out);
    const auto lines = lines_of(text.out);
    bool prefetched_line = false, histogram_header = false;
    for (const auto& l : lines) {
        if (l.rfind("pages prefetched", 0) == 0) {
            prefetched_line = true;
            const auto w = words_of(l);
            REQUIRE(w.size() == 3);
            CHECK(std::stoull(w[2]) == json_u64(js, "pages_prefetched"));  // nothing ran since
        }
        if (l == "fault latency histogram (" + std::to_string(sum(global)) + " faults)") histogram_header = true;
    }
    CHECK(prefetched_line);
    CHECK(histogram_header);
    // One row per non-empty bucket: label, count, and a bar scaled to the largest bucket.
    const std::uint64_t largest = *std::max_element(global.begin(), global.end());
    std::size_t rows = 0;
    for (const auto& l : lines) {
        if (l.rfind("  ", 0) != 0) continue;
        const auto w = words_of(l);
        if (w.size() != 3) continue;
        std::size_t bucket = 16;
        for (std::size_t i = 0; i < 16; ++i)
            if (w[0] == bucket_label(i)) bucket = i;
        if (bucket == 16) continue;
        INFO("histogram row: " << l);
        ++rows;
        CHECK(global[bucket] > 0);
        CHECK(std::stoull(w[1]) == global[bucket]);
        CHECK(w[2].find_first_not_of('#') == std::string::npos);
        CHECK(w[2].size() >= 1);
        CHECK(w[2].size() <= 40);
        if (global[bucket] == largest) CHECK(w[2].size() == 40);
    }
    CHECK(rows == static_cast<std::size_t>(std::count_if(global.begin(), global.end(), [](auto n) { return n > 0; })));
    // The region rows: client pid region bytes access tracking prefetch dirty faults p50 p99
    // pending (one or two words) and the region's non-empty buckets as label:count.
    for (const auto& [id, obj, policy] :
         {std::tuple{none->id, rn, "none"}, std::tuple{seq->id, rs, "sequential"}}) {
        INFO("region " << id);
        const std::string* row = nullptr;
        for (const auto& l : lines) {
            const auto w = words_of(l);
            if (w.size() > 8 && w[2] == std::to_string(id) && w[4] == "read-only") row = &l;
        }
        REQUIRE(row != nullptr);
        INFO(*row);
        const auto w = words_of(*row);
        CHECK(w[6] == policy);
        CHECK(std::stoull(w[8]) == json_u64(obj, "faults"));
        const auto hist = json_u64_array(obj, "latency_histogram");
        for (std::size_t i = 0; i < 16; ++i)
            if (hist[i] > 0)
                CHECK(std::find(w.begin(), w.end(), bucket_label(i) + ":" + std::to_string(hist[i])) != w.end());
    }

    REQUIRE(conn->unmap(none.value()).ok());
    REQUIRE(conn->unmap(seq.value()).ok());
}

TEST_CASE("pagerctl cat --prefetch takes every policy, and refuses an unknown one", "[read][pagerctl]")
{
    TempDir dir;
    make_file(dir.file("data"), 3 * 1024 * 1024 + 1234, 72);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    for (const char* policy : {"sequential", "none", "all"}) {
        INFO(policy);
        auto r = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "cat", dir.file("data"), "--prefetch",
                              policy, "--pattern", "random", "--threads", "2"});
        INFO(r.err);
        REQUIRE(exited_with(r.status, 0));
        CHECK(r.out == std::string(expect.begin(), expect.end()));
    }
    auto bad = run_command({PAGERCTL_BINARY, "--socket", daemon.socket(), "cat", dir.file("data"), "--prefetch", "some"});
    CHECK_FALSE(exited_with(bad.status, 0));
    CHECK(bad.out.empty());
    CHECK_THAT(bad.err, Catch::Contains("--prefetch") && Catch::Contains("\"some\"") &&
                            Catch::Contains("sequential, none or all"));
}
