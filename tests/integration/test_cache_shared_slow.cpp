// A slow read against a Shared client's write in the daemon's page cache: a ReadOnly
// client's load of a page reads the file, the read is slow (slowfs holds it at its read
// gate after it has read the bytes), and meanwhile a Shared client of the same file loads
// the page, writes it, flushes it to the file, and the cache evicts it. When the slow read
// finally returns, its bytes are older than the file's: the cache must not take them
// (Cache::fill skips a page written and evicted since the read started, see cache.hpp),
// or the Shared client's write would vanish from every view and a later flush of the page
// would overwrite it in the file with the old bytes.
//
// slowfs runs direct_io: every read of the file is a request to slowfs (no kernel page
// cache that a second read could be served from), and the held read locks no page that the
// Shared client's write-back would wait for. The cache is keyed by device and inode: every
// client maps the file through the FUSE mount.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <variant>
#include <vector>

#include "harness.hpp"
#include "pagerd/proto/constants.hpp"
#include "raw_client.hpp"
#include "slowfs_mount.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::MapOptions;
using libclient::Prefetch;
using libclient::Tracking;

namespace {

constexpr std::uint64_t k_page = 4096, k_mib = 1024 * 1024;
constexpr std::uint64_t k_cache_features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON | UFFD_FEATURE_MINOR_SHMEM;

// A raw client with a CACHE region of the whole file that maps and registers nothing: it
// only holds the cache's descriptor, to see which pages the cache holds (SEEK_DATA).
struct CacheObserver {
    CacheObserver(const Daemon& daemon, const std::string& path, std::uint64_t size) : client(daemon.socket())
    {
        client.hello();
        uffd.reset(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
        REQUIRE(uffd);
        uffdio_api api{UFFD_API, k_cache_features, 0};
        REQUIRE(::ioctl(uffd.get(), UFFDIO_API, &api) == 0);
        client.send(proto::RegisterUffd{k_cache_features, 0}, {uffd.get()});
        client.expect<proto::Ok>();
        length = size;
        addr = ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        REQUIRE(addr != MAP_FAILED);
        util::UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        REQUIRE(file);
        client.send(proto::Map{reinterpret_cast<std::uint64_t>(addr), length, 0, proto::k_map_cache,
                               proto::Prefetch::NONE},
                    {file.get()});
        auto got = client.receive_with_fds();
        REQUIRE(got.has_value());
        if (const auto* e = std::get_if<proto::ErrorReply>(&got->msg.body)) FAIL("MAP CACHE refused: " << e->text);
        REQUIRE(std::holds_alternative<proto::CacheMapped>(got->msg.body));
        REQUIRE(got->fds.size() == 1);
        cache = std::move(got->fds[0]);
    }
    ~CacheObserver() { ::munmap(addr, length); }
    CacheObserver(const CacheObserver&) = delete;
    CacheObserver& operator=(const CacheObserver&) = delete;
    bool holds(std::uint64_t page) const
    {
        return ::lseek(cache.get(), static_cast<off_t>(page * k_page), SEEK_DATA) == static_cast<off_t>(page * k_page);
    }
    RawClient client;
    util::UniqueFd uffd, cache;
    void* addr = nullptr;
    std::uint64_t length = 0;
};

bool wait_for(const std::atomic<bool>& flag, std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!flag && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(2ms);
    return flag;
}

std::vector<std::uint8_t> page_of(const std::vector<std::uint8_t>& bytes, std::uint64_t pg)
{
    return {bytes.begin() + static_cast<long>(pg * k_page), bytes.begin() + static_cast<long>((pg + 1) * k_page)};
}

std::string first_difference(const std::uint8_t* got, const std::vector<std::uint8_t>& want)
{
    for (std::size_t i = 0; i < want.size(); ++i)
        if (got[i] != want[i])
            return "first difference at byte " + std::to_string(i) + ": " + std::to_string(got[i]) + " instead of " +
                   std::to_string(want[i]);
    return "none";
}

}  // namespace

TEST_CASE("a slow read of a page that a Shared client wrote, flushed and the cache evicted meanwhile does not bring "
          "the old bytes back",
          "[cache][shared][slow]")
{
    TempDir dir;
    REQUIRE(::mkdir(dir.file("backing").c_str(), 0755) == 0);
    REQUIRE(::mkdir(dir.file("mnt").c_str(), 0755) == 0);
    const std::uint64_t size = 8 * k_mib;
    const std::uint64_t P = 6 * k_mib / k_page;  // the page of the race, far from the pages the evictor touches
    make_file(dir.file("backing") + "/data", size, 111);
    auto model = read_file(dir.file("backing") + "/data");
    const auto old_page = page_of(model, P);
    SlowFsOptions fo;
    fo.direct_io = true;
    fo.read_gate = true;
    SlowFs fs(dir.file("backing"), dir.file("mnt"), fo);  // before the daemon: unmounted after it
    // One worker: the held read must not hold up the other clients' faults on it either.
    // No read-ahead: each fault loads its own page and nothing else.
    Daemon daemon({"--memory-max", "1MiB", "--workers", "1", "--readahead-max", "0"});
    const std::string path = fs.path("data");
    CacheObserver observer(daemon, path, size);

    auto reader = daemon.connect("R");
    auto writer = daemon.connect("S");
    auto evictor = daemon.connect("evictor");
    MapOptions ro;
    ro.length = size;
    ro.prefetch = Prefetch::None;
    auto rr = reader->map_file(path, ro);
    REQUIRE(rr.ok());
    MapOptions so = ro;
    so.access = Access::Shared;
    so.tracking = Tracking::UffdWp;
    auto rs = writer->map_file(path, so);
    REQUIRE(rs.ok());
    REQUIRE(rs->tracking == Tracking::UffdWp);
    auto re = evictor->map_file(path, ro);
    REQUIRE(re.ok());
    const auto* rp = static_cast<const std::uint8_t*>(rr->addr);
    auto* sp = static_cast<std::uint8_t*>(rs->addr);
    const auto* ep = static_cast<const std::uint8_t*>(re->addr);
    REQUIRE_FALSE(observer.holds(P));

    // 1. R faults on P; its read has the file's old bytes and is held in slowfs. At most one
    //    read is held: the others' reads of P go through.
    fs.close_read_gate(P * k_page, k_page, 1);
    std::vector<std::uint8_t> seen(k_page);
    std::atomic<bool> read_done{false};
    std::thread r_thread([&] {
        std::memcpy(seen.data(), rp + P * k_page, k_page);
        read_done = true;
    });
    struct Release {  // whatever fails below: the held read ends, the thread is joined
        SlowFs& fs;
        std::thread& t;
        ~Release()
        {
            fs.open_read_gate();
            if (t.joinable()) t.join();
        }
    } release{fs, r_thread};
    REQUIRE(fs.wait_blocked_reads(1));
    CHECK_FALSE(read_done);

    // 2. S loads P (its own read goes through), writes it, flushes: the file has the new bytes.
    std::memset(sp + P * k_page + 100, 0xA5, 64);
    std::memset(model.data() + P * k_page + 100, 0xA5, 64);
    CHECK(std::memcmp(sp + P * k_page, model.data() + P * k_page, k_page) == 0);
    auto fl = writer->flush(rs.value());
    REQUIRE(fl.ok());
    CHECK(fl->pages == 1);
    CHECK((page_of(read_file(dir.file("backing") + "/data"), P) == page_of(model, P)));
    CHECK(observer.holds(P));
    CHECK_FALSE(read_done);

    // 3. The cache evicts P: the evictor reads 4 MiB elsewhere in the file (1 MiB budget).
    std::uint64_t sum = 0, touched = 0;
    for (std::uint64_t pg = 0; pg < 5 * k_mib / k_page && observer.holds(P); ++pg, ++touched)
        sum += ep[pg * k_page];
    INFO("the evictor touched " << touched << " pages (sum " << sum << ")");
    REQUIRE_FALSE(observer.holds(P));
    CHECK(daemon.status().cache_evictions > 0);
    CHECK(fs.blocked_reads() == 1);
    CHECK_FALSE(read_done);

    // 4. R's read returns its old bytes: R must see S's write, never the old page.
    fs.open_read_gate();
    REQUIRE(wait_for(read_done, 10s));
    r_thread.join();
    {
        INFO("R saw: " << first_difference(seen.data(), page_of(model, P))
                       << (seen == old_page ? " (the old bytes)" : ""));
        CHECK((seen == page_of(model, P)));
    }
    // S's view still shows its write, and R's view is the same page.
    CHECK(std::memcmp(sp + P * k_page, model.data() + P * k_page, k_page) == 0);
    CHECK(std::memcmp(rp + P * k_page, model.data() + P * k_page, k_page) == 0);

    // 5. Another write of S to the page, flushed: the file holds both writes.
    sp[P * k_page + 3000] = 0x5A;
    model[P * k_page + 3000] = 0x5A;
    fl = writer->flush(rs.value());
    REQUIRE(fl.ok());
    CHECK(fl->pages == 1);
    const auto file = read_file(dir.file("backing") + "/data");
    {
        INFO("file page: " << first_difference(file.data() + P * k_page, page_of(model, P)));
        CHECK((page_of(file, P) == page_of(model, P)));
    }
    CHECK((file == model));
    CHECK(std::memcmp(rp + P * k_page, model.data() + P * k_page, k_page) == 0);
    CHECK(daemon.alive());
    const auto s = daemon.status();
    CHECK(s.cache_dirty_bytes == 0);
    INFO("evictions " << s.cache_evictions << ", loads " << s.cache_loads);
    REQUIRE(writer->unmap(rs.value()).ok());
}
