// Write-back runs beside the fault path: a flush stuck on a slow store (slowfs holding its
// writes at a gate) holds up no other client's faults, and still writes the right bytes.
#include <catch2/catch.hpp>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "harness.hpp"
#include "slowfs_mount.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::Tracking;

namespace {

constexpr std::uint64_t k_page = 4096, k_mib = 1024 * 1024;

bool wait_for(const std::atomic<bool>& flag, std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!flag && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    return flag;
}

}  // namespace

TEST_CASE("a flush stuck on a slow store holds up no other fault, then writes the right bytes", "[writeback][slow]")
{
    const Tracking tracking = GENERATE(Tracking::UffdWp, Tracking::Sigsegv, Tracking::Async);
    INFO("tracking " << libclient::tracking_name(tracking));
    TempDir dir;
    REQUIRE(::mkdir(dir.file("backing").c_str(), 0755) == 0);
    REQUIRE(::mkdir(dir.file("mnt").c_str(), 0755) == 0);
    const std::uint64_t size = 8 * k_mib, local_size = 16 * k_mib;
    make_file(dir.file("backing") + "/shared", size, 51);
    make_file(dir.file("local"), local_size, 52);
    auto model = read_file(dir.file("backing") + "/shared");
    SlowFs fs(dir.file("backing"), dir.file("mnt"), 0);
    // One worker: the flushing client and the others share it, as they may in production.
    Daemon daemon({"--workers", "1"});
    auto writer = daemon.connect("writer");
    auto r = writer->map_file(fs.path("shared"), {0, size, Access::Shared, tracking});
    REQUIRE(r.ok());
    auto* p = static_cast<std::uint8_t*>(r->addr);
    std::uint64_t written = 0;
    for (std::uint64_t off = 0; off < 4 * k_mib; off += 4 * k_page, ++written) {
        std::memset(p + off, static_cast<int>(off >> 14), k_page);
        std::memset(model.data() + off, static_cast<int>(off >> 14), k_page);
    }

    fs.close_gate();
    std::atomic<bool> flush_done{false};
    Result<libclient::FlushResult> flushed = libclient::FlushResult{};
    std::thread flusher([&] {
        flushed = writer->flush(r.value());
        flush_done = true;
    });
    REQUIRE(fs.wait_blocked(1));  // the write-back is now stuck in a write

    // Another client reads a whole file, and the flushing client's other threads fault
    // pages it never loaded, while the flush cannot go on.
    auto reader = daemon.connect("reader");
    auto ro = reader->map_file(dir.file("local"), {0, local_size, Access::ReadOnly});
    REQUIRE(ro.ok());
    std::atomic<bool> read_done{false}, own_done{false};
    std::atomic<std::uint64_t> wrong{0};
    std::thread other([&] {
        const auto* q = static_cast<const std::uint8_t*>(ro->addr);
        for (std::uint64_t off = 0; off < local_size; off += k_page)
            wrong += q[off + off / k_page % k_page] != pattern_byte(off + off / k_page % k_page, 52);
        read_done = true;
    });
    std::thread own([&] {
        for (std::uint64_t off = 5 * k_mib; off < size; off += k_page) wrong += p[off + 7] != model[off + 7];
        own_done = true;
    });
    const bool others_served = wait_for(read_done, 10s) && wait_for(own_done, 10s);
    const bool flush_was_pending = !flush_done;
    const auto blocked_meanwhile = fs.blocked_writes();
    fs.open_gate();  // whatever happened: nothing may stay stuck
    flusher.join();
    other.join();
    own.join();
    CHECK(others_served);
    CHECK(flush_was_pending);
    CHECK(blocked_meanwhile >= 1);
    CHECK(wrong == 0);
    REQUIRE(flushed.ok());
    CHECK(flushed->pages == written);
    CHECK(flushed->bytes == written * k_page);
    CHECK((read_file(dir.file("backing") + "/shared") == model));
}
