// An NBD export over TLS (pre-shared key): the daemon reads it through libnbd's nbds URI.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "harness.hpp"
#include "nbdkit.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;

TEST_CASE("an export that requires TLS is read through an nbds URI with a pre-shared key", "[nbd]")
{
    TempDir dir;
    const std::uint64_t size = 8ull << 20;
    make_file(dir.file("data"), size, 11);
    {
        std::ofstream keys(dir.file("keys.psk"));
        keys << "alice:8a4e3d1b5c7f9a2e4d6b8c0f1a3e5d7b9c2f4a6e8d0b1c3f5a7e9d2b4c6f8a0e\n";
    }
    Nbdkit server("file", {dir.file("data")}, Nbdkit::Transport::Unix,
                  {}, {"--tls=require", "--tls-psk=" + dir.file("keys.psk")});
    const std::string uri = server.uri_with("nbds+unix", "alice@", "", "&tls-psk-file=" + dir.file("keys.psk"));
    Daemon d({"--allow-store=" + uri});
    auto conn = d.connect();
    libclient::MapOptions o;
    o.length = size;
    auto r = conn->map_store(uri, o);
    REQUIRE(r);
    const auto* p = static_cast<const std::uint8_t*>(r->addr);
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < size; ++i) bad += p[i] != pattern_byte(i, 11);
    CHECK(bad == 0);
    CHECK(conn->unmap(*r));
    // The same export without TLS is refused by the server: the daemon says why.
    const std::string plain = server.uri();
    Daemon d2({"--allow-store=" + plain, "--store-timeout-ms=5000"});
    auto c2 = d2.connect();
    auto refused = c2->map_store(plain, o);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().is_daemon(proto::ErrorCode::IO_ERROR));
}
