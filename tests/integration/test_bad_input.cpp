// Hostile and broken peers: every one gets a clear error (or a clean disconnect for a
// protocol violation), the daemon serves everybody else on, and nothing leaks.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <thread>

#include "harness.hpp"
#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"
#include "pagerd/util/uffd.hpp"
#include "raw_client.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using proto::ErrorCode;

namespace {

struct Fixture {
    TempDir dir;
    Daemon daemon{{"--max-regions-per-client", "4", "--max-mapped-bytes-per-client", "1048576",
                   "--hello-timeout-ms", "300", "--max-clients", "16"}};
    std::size_t fds_at_start = daemon.fd_count();
    Fixture() { make_file(dir.file("data"), 1024 * 1024 + 100, 5); }

    // The daemon still serves a well-behaved client correctly, and holds no more
    // descriptors than when the test began.
    void check_unharmed()
    {
        REQUIRE(daemon.alive());
        auto conn = daemon.connect("bystander");
        auto r = conn->map_file(dir.file("data"), {4096, 65536, libclient::Access::ReadOnly});
        REQUIRE(r.ok());
        const auto* p = static_cast<const std::uint8_t*>(r->addr);
        for (std::uint64_t i = 0; i < 65536; i += 997) REQUIRE(p[i] == pattern_byte(4096 + i, 5));
        REQUIRE(conn->unmap(r.value()).ok());
        conn.reset();
        CHECK(daemon.wait_fds_at_most(fds_at_start));
        CHECK(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0; }));
    }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "framing violations get MALFORMED and a disconnect", "[bad-input]")
{
    const auto good = proto::encode(proto::Message{1, proto::Ping{5}});
    SECTION("garbage")
    {
        RawClient c(daemon.socket());
        c.send_raw(std::vector<std::uint8_t>(40, 0xEE));
        c.expect_error(ErrorCode::MALFORMED);
        CHECK(c.closed_by_daemon());
    }
    SECTION("shorter than the header")
    {
        RawClient c(daemon.socket());
        c.send_raw(std::vector<std::uint8_t>(good.begin(), good.begin() + 7));
        c.expect_error(ErrorCode::MALFORMED);
        CHECK(c.closed_by_daemon());
    }
    SECTION("truncated body")
    {
        RawClient c(daemon.socket());
        auto cut = proto::encode(proto::Message{1, proto::Hello{1, 0, "x"}});
        cut.resize(cut.size() - 2);
        cut[8] = static_cast<std::uint8_t>(cut.size());  // length field agrees, body is short
        c.send_raw(cut);
        c.expect_error(ErrorCode::MALFORMED);
        CHECK(c.closed_by_daemon());
    }
    SECTION("length field lies")
    {
        RawClient c(daemon.socket());
        auto lie = good;
        lie[8] += 4;
        c.send_raw(lie);
        c.expect_error(ErrorCode::MALFORMED);
        CHECK(c.closed_by_daemon());
    }
    SECTION("oversized datagram")
    {
        RawClient c(daemon.socket());
        std::vector<std::uint8_t> big(64 * 1024, 0);
        std::memcpy(big.data(), good.data(), good.size());
        c.send_raw(big);
        c.expect_error(ErrorCode::MALFORMED);
        CHECK(c.closed_by_daemon());
    }
    SECTION("first message is not HELLO")
    {
        RawClient c(daemon.socket());
        c.send(proto::Ping{1});
        c.expect_error(ErrorCode::NOT_READY);
        CHECK(c.closed_by_daemon());
    }
    check_unharmed();
}

TEST_CASE_METHOD(Fixture, "recoverable mistakes get an error reply and the session goes on", "[bad-input]")
{
    auto c_owner = std::make_unique<RawClient>(daemon.socket());
    RawClient& c = *c_owner;
    c.hello();
    SECTION("unknown type, answered with the request id")
    {
        auto bytes = proto::encode(proto::Message{1, proto::Ping{5}});
        bytes[6] = 200;  // type
        bytes[12] = 77;  // request id
        c.send_raw(bytes);
        auto m = c.receive();
        REQUIRE(m.has_value());
        CHECK(m->request_id == 77);
        REQUIRE(std::holds_alternative<proto::ErrorReply>(m->body));
        CHECK(std::get<proto::ErrorReply>(m->body).code == ErrorCode::UNKNOWN_TYPE);
    }
    SECTION("a daemon-to-client type sent to the daemon")
    {
        c.send(proto::Pong{1});
        c.expect_error(ErrorCode::UNKNOWN_TYPE);
    }
    SECTION("second HELLO")
    {
        c.send(proto::Hello{1, 0, "again"});
        c.expect_error(ErrorCode::NOT_READY);
    }
    SECTION("MAP before REGISTER_UFFD")
    {
        util::UniqueFd f(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
        c.send(proto::Map{0x10000000, 4096, 0, 0}, {f.get()});
        c.expect_error(ErrorCode::NOT_READY);
    }
    SECTION("a pipe passed as userfaultfd")
    {
        int p[2];
        REQUIRE(::pipe(p) == 0);
        c.send(proto::RegisterUffd{0, 0}, {p[0]});
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
        ::close(p[0]);
        ::close(p[1]);
    }
    SECTION("REGISTER_UFFD without a descriptor, and with too many")
    {
        c.send(proto::RegisterUffd{0, 0});
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
        auto u1 = make_uffd(), u2 = make_uffd();
        c.send(proto::RegisterUffd{0, 0}, {u1.get(), u2.get()});
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
    }
    SECTION("PING carrying a descriptor")
    {
        util::UniqueFd f(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
        c.send(proto::Ping{3}, {f.get()});
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
    }
    SECTION("UNMAP of a region never mapped")
    {
        c.send(proto::Unmap{12345});
        c.expect_error(ErrorCode::NO_SUCH_REGION);
    }
    c.send(proto::Ping{99});
    CHECK(c.expect<proto::Pong>().nonce == 99);
    c_owner.reset();
    check_unharmed();
}

TEST_CASE_METHOD(Fixture, "MAP checks descriptors, ranges, overlaps and limits", "[bad-input][map]")
{
    auto c_owner = std::make_unique<RawClient>(daemon.socket());
    RawClient& c = *c_owner;
    c.hello();
    auto uffd = make_uffd();
    c.send(proto::RegisterUffd{UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON, 0}, {uffd.get()});
    c.expect<proto::Ok>();
    c.send(proto::RegisterUffd{0, 0}, {uffd.get()});
    c.expect_error(ErrorCode::NOT_READY);  // once per connection
    util::UniqueFd file(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
    const std::uint64_t mem = registered_memory(uffd.get(), 1024 * 1024 + 8192);
    auto map = [&](std::uint64_t addr, std::uint64_t len, std::uint64_t off, std::uint32_t flags = 0, int fd = -1) {
        c.send(proto::Map{addr, len, off, flags}, {fd < 0 ? file.get() : fd});
    };
    SECTION("wrong kinds of descriptor")
    {
        util::UniqueFd dirfd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        map(mem, 4096, 0, 0, dirfd.get());
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
        util::UniqueFd wronly(::open(dir.file("data").c_str(), O_WRONLY | O_CLOEXEC));
        map(mem, 4096, 0, 0, wronly.get());
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
        util::UniqueFd path(::open(dir.file("data").c_str(), O_PATH | O_CLOEXEC));
        map(mem, 4096, 0, 0, path.get());
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
        c.send(proto::Map{mem, 4096, 0, 0});
        c.expect_error(ErrorCode::BAD_DESCRIPTOR);
    }
    SECTION("zero, unaligned, wrapping, unknown flags, past EOF")
    {
        map(mem, 0, 0);
        CHECK_THAT(c.expect_error(ErrorCode::BAD_RANGE).text, Catch::Contains("zero"));
        map(mem, 4095, 0);
        CHECK_THAT(c.expect_error(ErrorCode::BAD_RANGE).text, Catch::Contains("multiples of the page size"));
        map(mem + 1, 4096, 0);
        c.expect_error(ErrorCode::BAD_RANGE);
        map(mem, 4096, 100);
        c.expect_error(ErrorCode::BAD_RANGE);
        map(~std::uint64_t{0} - 4095, 8192, 0);
        c.expect_error(ErrorCode::BAD_RANGE);
        map(mem, 4096, ~std::uint64_t{0} - 4095);
        c.expect_error(ErrorCode::BAD_RANGE);
        map(mem, 4096, 0, 0x80);
        CHECK_THAT(c.expect_error(ErrorCode::BAD_RANGE).text, Catch::Contains("unknown MAP flags"));
        // The file has 1 MiB + 100 bytes: 257 pages.
        map(mem, 65536, 1024 * 1024 + 8192 - 65536);
        CHECK_THAT(c.expect_error(ErrorCode::PAST_EOF).text, Catch::Contains("past the end of the file"));
        map(mem, 65536, 1024 * 1024 + 4096 - 65536);  // ends exactly at the file rounded up: fine
        c.expect<proto::Mapped>();
    }
    SECTION("overlap and limits")
    {
        map(mem, 65536, 0);
        const auto first = c.expect<proto::Mapped>().region_id;
        CHECK(first == 1);
        map(mem + 61440, 8192, 0);
        c.expect_error(ErrorCode::OVERLAP);
        map(mem - 4096, 8192, 0);
        c.expect_error(ErrorCode::OVERLAP);
        for (int i = 1; i < 4; ++i) {
            map(mem + i * 65536, 65536, 0);
            c.expect<proto::Mapped>();
        }
        map(mem + 4 * 65536, 4096, 0);
        CHECK_THAT(c.expect_error(ErrorCode::LIMIT).text, Catch::Contains("regions per client"));
        c.send(proto::Unmap{first});
        c.expect<proto::Ok>();
        c.send(proto::Unmap{first});  // already gone: idempotent
        c.expect<proto::Ok>();
        map(mem + 4 * 65536, 1024 * 1024 - 3 * 65536 + 4096, 0);
        CHECK_THAT(c.expect_error(ErrorCode::LIMIT).text, Catch::Contains("bytes mapped per client"));
    }
    c.send(proto::Ping{1});
    c.expect<proto::Pong>();
    c_owner.reset();
    uffd.reset();
    check_unharmed();
}

TEST_CASE_METHOD(Fixture, "a silent client is timed out and a flooding client is cut off", "[bad-input][flood]")
{
    SECTION("sends nothing")
    {
        RawClient c(daemon.socket());
        c.expect_error(ErrorCode::TIMEOUT);
        CHECK(c.closed_by_daemon());
    }
    SECTION("floods requests and never reads the replies")
    {
        RawClient c(daemon.socket());
        c.hello();
        const auto bytes = proto::encode(proto::Message{1, proto::Ping{1}});
        // Blocking sends: they go on while the daemon reads, until it gives up on us.
        std::atomic<int> sent{0};
        std::thread flood([&] {
            while (sent < 1000000 && ::send(c.fd(), bytes.data(), bytes.size(), MSG_NOSIGNAL) >= 0) ++sent;
        });
        // Meanwhile a well-behaved client gets its answers.
        auto other = daemon.connect("polite");
        for (int i = 0; i < 50; ++i) REQUIRE(other->ping().ok());
        flood.join();
        INFO("requests sent before the daemon hung up: " << sent);
        CHECK(sent < 1000000);  // the send failed: the daemon closed the connection
        CHECK_THAT(daemon.log(), Catch::Contains("does not read its replies"));
    }
    SECTION("too many clients")
    {
        std::vector<std::unique_ptr<libclient::Connection>> conns;
        for (int i = 0; i < 16; ++i) conns.push_back(daemon.connect());
        auto extra = libclient::Connection::connect({daemon.socket()});
        REQUIRE_FALSE(extra.ok());
        CHECK_THAT(extra.error().message, Catch::Contains("too many clients"));
        conns.clear();
    }
    check_unharmed();
}

TEST_CASE_METHOD(Fixture, "clients that vanish at awkward moments leak nothing", "[bad-input][leak]")
{
    for (int i = 0; i < 20; ++i) {
        RawClient c(daemon.socket());
        if (i % 4 == 0) continue;  // connect and close
        c.hello();
        auto uffd = make_uffd();
        c.send(proto::RegisterUffd{UFFD_FEATURE_EVENT_UNMAP, 0}, {uffd.get()});
        if (i % 4 == 1) continue;  // close before reading OK
        c.expect<proto::Ok>();
        util::UniqueFd file(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
        const std::uint64_t mem = registered_memory(uffd.get(), 65536);
        c.send(proto::Map{mem, 65536, 0, 0}, {file.get()});
        if (i % 4 == 2) continue;  // close with a MAP in flight
        c.expect<proto::Mapped>();
        ::munmap(reinterpret_cast<void*>(mem), 65536);
    }
    check_unharmed();
}

namespace {

// Pages of [addr, addr + len) present in this process's memory (mincore).
std::uint64_t resident_pages(std::uint64_t addr, std::uint64_t len)
{
    std::vector<unsigned char> v(len / 4096);
    REQUIRE(::mincore(reinterpret_cast<void*>(addr), len, v.data()) == 0);
    std::uint64_t n = 0;
    for (const auto b : v) n += b & 1;
    return n;
}

// The daemon's REGIONS entry for region `id` of this process, listed through c.
std::optional<proto::RegionEntry> raw_region(RawClient& c, std::uint64_t id)
{
    c.send(proto::RegionsRequest{0});
    const auto list = c.expect<proto::RegionsReply>();
    for (const auto& e : list.entries)
        if (e.pid == static_cast<std::uint32_t>(::getpid()) && e.region_id == id) return e;
    return std::nullopt;
}

}  // namespace

TEST_CASE_METHOD(Fixture, "PREFETCH checks flags, alignment, overflow and regions, MAP checks the policy", "[bad-input][prefetch]")
{
    auto c_owner = std::make_unique<RawClient>(daemon.socket());
    RawClient& c = *c_owner;
    c.hello();
    auto uffd = make_uffd();
    c.send(proto::RegisterUffd{UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON, 0}, {uffd.get()});
    c.expect<proto::Ok>();
    util::UniqueFd file(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
    const std::uint64_t mem = registered_memory(uffd.get(), 1024 * 1024);
    std::uint64_t nonce = 100;
    // After every refusal the connection still answers.
    auto still_usable = [&] {
        c.send(proto::Ping{++nonce});
        CHECK(c.expect<proto::Pong>().nonce == nonce);
    };
    auto prefetch = [&](std::uint64_t addr, std::uint64_t len, std::uint32_t flags) {
        c.send(proto::PrefetchRequest{addr, len, flags});
    };
    const std::uint32_t wait = proto::k_prefetch_wait;

    prefetch(mem, 65536, wait);  // no region yet
    c.expect_error(ErrorCode::NO_SUCH_REGION);
    still_usable();
    c.send(proto::Map{mem, 65536, 0, 0, proto::Prefetch::SEQUENTIAL}, {file.get()});
    const auto id = c.expect<proto::Mapped>().region_id;

    SECTION("unknown flags")
    {
        for (std::uint32_t flags : {2u, 4u, 0x80000000u, wait | 0x100u}) {
            INFO("flags " << flags);
            prefetch(mem, 65536, flags);
            c.expect_error(ErrorCode::BAD_RANGE);
            still_usable();
        }
    }
    SECTION("unaligned, empty, overflowing")
    {
        prefetch(mem + 1, 4096, wait);
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(mem, 4095, 0);
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(mem + 2048, 8192, 0);
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(mem, 0, wait);
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(mem, 0, 0);
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(~std::uint64_t{0} - 4095, 8192, wait);
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(mem, ~std::uint64_t{0} - 4095, 0);  // aligned, but the end wraps
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        prefetch(0x1001, 4096, 0);  // unaligned and outside every region: the range check comes first
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
    }
    SECTION("outside every region")
    {
        prefetch(mem + 65536, 65536, wait);  // right after the region
        c.expect_error(ErrorCode::NO_SUCH_REGION);
        still_usable();
        prefetch(mem - 65536, 65536, 0);  // right before it
        c.expect_error(ErrorCode::NO_SUCH_REGION);
        still_usable();
        prefetch(0x10000, 4096, wait);
        c.expect_error(ErrorCode::NO_SUCH_REGION);
        still_usable();
        // Overlapping the region is enough: the rest is ignored.
        prefetch(mem - 65536, 3 * 65536, wait);
        c.expect<proto::Ok>();
        prefetch(mem, 65536, 0);
        c.expect<proto::Ok>();
        prefetch(mem, 65536, wait);
        c.expect<proto::Ok>();
        // The waited prefetch loaded the region: its pages are there and read as the file.
        CHECK(resident_pages(mem, 65536) == 16);
        const auto* p = reinterpret_cast<const std::uint8_t*>(mem);
        for (std::uint64_t i = 0; i < 65536; i += 1009) REQUIRE(p[i] == pattern_byte(i, 5));
        // Once the region is gone, so is its range.
        c.send(proto::Unmap{id});
        c.expect<proto::Ok>();
        prefetch(mem, 65536, wait);
        c.expect_error(ErrorCode::NO_SUCH_REGION);
        still_usable();
    }
    SECTION("MAP with an unknown policy")
    {
        c.send(proto::Map{mem + 131072, 65536, 0, 0, static_cast<proto::Prefetch>(3)}, {file.get()});
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        // 0x100 on the wire (the codec's Prefetch is one byte): written into MAP.prefetch,
        // body offset 28.
        auto bytes = proto::encode(proto::Message{500, proto::Map{mem + 131072, 65536, 0, 0, proto::Prefetch::NONE}});
        REQUIRE(bytes.size() == proto::k_header_size + 32);
        const std::uint32_t v = 0x100;
        std::memcpy(bytes.data() + proto::k_header_size + 28, &v, sizeof v);
        c.send_raw(bytes, {file.get()});
        c.expect_error(ErrorCode::BAD_RANGE);
        still_usable();
        // The three policies are taken.
        for (std::uint64_t k = 0; k < 3; ++k) {
            c.send(proto::Map{mem + (2 + k) * 65536, 65536, 0, 0, static_cast<proto::Prefetch>(k)}, {file.get()});
            c.expect<proto::Mapped>();
        }
    }
    still_usable();
    c_owner.reset();
    uffd.reset();
    check_unharmed();
}


TEST_CASE("the 65th queued PREFETCH of a connection gets LIMIT, and once they drain prefetches work again", "[bad-input][prefetch][limit]")
{
    TempDir dir;
    const std::uint64_t size = 8 * 1024 * 1024;
    make_file(dir.file("data"), size, 9);
    // Few staging buffers, and a file read with O_DIRECT: every load of a prefetch goes to
    // the disk through io_uring (nothing comes from the page cache at once), so a
    // prefetch of the region takes many turns of the daemon's loop, and 65 requests sent
    // at once find the first 64 still queued.
    Daemon daemon({"--staging-buffers", "4", "--workers", "1"});
    RawClient c(daemon.socket());
    c.hello();
    auto uffd = make_uffd();
    c.send(proto::RegisterUffd{UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON, 0}, {uffd.get()});
    c.expect<proto::Ok>();
    util::UniqueFd file(::open(dir.file("data").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    REQUIRE(file);
    const std::uint64_t mem = registered_memory(uffd.get(), size);
    c.send(proto::Map{mem, size, 0, 0, proto::Prefetch::NONE}, {file.get()});
    const auto id = c.expect<proto::Mapped>().region_id;

    // 65 prefetches of the whole region, none waiting, sent before reading a reply.
    for (int i = 0; i < 65; ++i) c.send(proto::PrefetchRequest{mem, size, 0});
    for (int i = 0; i < 64; ++i) {
        INFO("prefetch " << i);
        c.expect<proto::Ok>();
    }
    CHECK_THAT(c.expect_error(ErrorCode::LIMIT).text, Catch::Contains("prefetch"));
    c.send(proto::Ping{7});
    CHECK(c.expect<proto::Pong>().nonce == 7);

    // They drain: nothing pending any more, and a new prefetch is taken (and waited for).
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    std::optional<proto::RegionEntry> e;
    while ((e = raw_region(c, id)) && e->prefetch_pending > 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    REQUIRE(e.has_value());
    CHECK(e->prefetch_pending == 0);
    CHECK(e->faults == 0);
    CHECK(resident_pages(mem, size) == size / 4096);  // the prefetches loaded the region
    c.send(proto::PrefetchRequest{mem, size, proto::k_prefetch_wait});
    c.expect<proto::Ok>();
    const auto* p = reinterpret_cast<const std::uint8_t*>(mem);
    for (std::uint64_t off = 0; off < size; off += 4099) REQUIRE(p[off] == pattern_byte(off, 9));
    c.send(proto::Ping{8});
    CHECK(c.expect<proto::Pong>().nonce == 8);
    ::munmap(reinterpret_cast<void*>(mem), size);
}
