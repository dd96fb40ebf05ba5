// daemon/store/uri.hpp: how store URIs split, which ones an --allow-store prefix allows,
// and the zero store's sizes. (The daemon applying them to real servers: test_nbd_allow.)
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "store/uri.hpp"

using namespace pagerd::daemon::store;

TEST_CASE("split_uri: scheme://authority/path?query", "[uri]")
{
    auto p = split_uri("nbd://user@10.0.0.5:10809/vm-disk?tls=on");
    REQUIRE(p);
    CHECK(p->scheme == "nbd");
    CHECK(p->authority == "user@10.0.0.5:10809");
    CHECK(p->path == "/vm-disk");
    CHECK(p->query == "tls=on");

    p = split_uri("nbd+unix:///?socket=/run/nbd.sock");
    REQUIRE(p);
    CHECK(p->scheme == "nbd+unix");
    CHECK(p->authority.empty());
    CHECK(p->path == "/");
    CHECK(p->query == "socket=/run/nbd.sock");

    p = split_uri("nbd://host");  // no path
    REQUIRE(p);
    CHECK(p->authority == "host");
    CHECK(p->path.empty());
    CHECK(p->query.empty());

    p = split_uri("nbd://host?x=/y");  // a '/' in the query is the query's
    REQUIRE(p);
    CHECK(p->authority == "host");
    CHECK(p->path.empty());
    CHECK(p->query == "x=/y");

    p = split_uri("nbd://h/a?b?c");  // the first '?' starts the query
    REQUIRE(p);
    CHECK(p->path == "/a");
    CHECK(p->query == "b?c");

    p = split_uri("nbd://h/a/b//c");
    REQUIRE(p);
    CHECK(p->path == "/a/b//c");
}

TEST_CASE("split_uri refuses what is not scheme://..., fragments, blanks, control characters, backslashes", "[uri]")
{
    for (const std::string& bad : std::vector<std::string>{
             "", "nbd", "nbd:", "nbd:/host/x", "nbd//host/x", "://host/x", "zero:1M", "/etc/passwd",
          "nbd://h/x#frag", "nbd://h/x?q#", "nbd://h/x y", "nbd://h/x\ty", std::string("nbd://h/x\0y", 11),
          "nbd://h/x\ny", "nbd://h/x\x7fy", "nbd://h\\x/", "nbd://h/x\\y", " nbd://h/x", "nbd://h/x ",
          "n?d://h/x", "n/d://h/x", "nb%64://h/x", "nbd?x=://h/x"}) {
        INFO("'" << bad << "'");
        CHECK_FALSE(split_uri(bad));
    }
    // A scheme of RFC 3986's characters only.
    CHECK(split_uri("nbds+unix://x/"));
    CHECK(split_uri("a.b-c+d://x/"));
}

TEST_CASE("is_nbd_scheme: nbd, nbds, nbd+unix, nbds+unix and nothing else", "[uri]")
{
    for (const char* s : {"nbd", "nbds", "nbd+unix", "nbds+unix"}) CHECK(is_nbd_scheme(s));
    for (const char* s : {"", "NBD", "nbd+vsock", "nbds+vsock", "nbd+ssh", "nbd+tcp", "file", "http", "nbd ", "nbdx"})
        CHECK_FALSE(is_nbd_scheme(s));
}

TEST_CASE("allowed_by: the same scheme, authority and query, the prefix's path a prefix of the URI's", "[uri]")
{
    const std::string unix_prefix = "nbd+unix:///a?socket=/run/nbd.sock";
    CHECK(allowed_by("nbd+unix:///a?socket=/run/nbd.sock", unix_prefix));
    CHECK(allowed_by("nbd+unix:///abc?socket=/run/nbd.sock", unix_prefix));   // the path's prefix
    CHECK(allowed_by("nbd+unix:///a/b?socket=/run/nbd.sock", unix_prefix));
    CHECK_FALSE(allowed_by("nbd+unix:///b?socket=/run/nbd.sock", unix_prefix));  // another export
    CHECK_FALSE(allowed_by("nbd+unix:///?socket=/run/nbd.sock", unix_prefix));   // shorter
    CHECK_FALSE(allowed_by("nbd+unix:///A?socket=/run/nbd.sock", unix_prefix));  // case
    CHECK_FALSE(allowed_by("nbd+unix:///a?socket=/run/other.sock", unix_prefix));  // another socket
    CHECK_FALSE(allowed_by("nbd+unix:///a?socket=/run/nbd.sock&tls=require", unix_prefix));  // a parameter added
    CHECK_FALSE(allowed_by("nbd+unix:///a?tls=require&socket=/run/nbd.sock", unix_prefix));
    CHECK_FALSE(allowed_by("nbd+unix:///a?socket=/run/nbd.sock&socket=/x", unix_prefix));
    CHECK_FALSE(allowed_by("nbd+unix:///a", unix_prefix));  // the query dropped
    CHECK_FALSE(allowed_by("nbd+unix:///a?", unix_prefix));
    CHECK_FALSE(allowed_by("nbd+unix:///a?socket=%2Frun%2Fnbd.sock", unix_prefix));  // the same, encoded: not the same text
    CHECK_FALSE(allowed_by("nbds+unix:///a?socket=/run/nbd.sock", unix_prefix));  // another scheme
    CHECK_FALSE(allowed_by("nbd+unix://localhost/a?socket=/run/nbd.sock", unix_prefix));  // an authority
    CHECK_FALSE(allowed_by("nbd+unix://@/a?socket=/run/nbd.sock", unix_prefix));
    CHECK_FALSE(allowed_by("nbd+unix:///a?socket=/run/nbd.sock#x", unix_prefix));  // a fragment
    CHECK_FALSE(allowed_by("nbd+unix:///a x?socket=/run/nbd.sock", unix_prefix));

    const std::string tcp_prefix = "nbd://127.0.0.1:10809/";
    CHECK(allowed_by("nbd://127.0.0.1:10809/", tcp_prefix));
    CHECK(allowed_by("nbd://127.0.0.1:10809/x", tcp_prefix));
    CHECK(allowed_by("nbd://127.0.0.1:10809/any/thing", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1:10810/x", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1:108090/x", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1/x", tcp_prefix));  // the default port is another text
    CHECK_FALSE(allowed_by("nbd://localhost:10809/x", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1.:10809/x", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://user@127.0.0.1:10809/x", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1:10809@evil:10809/x", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1:10809/x?socket=/tmp/s", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1:10809/x?tls-psk-file=/etc/shadow", tcp_prefix));
    CHECK_FALSE(allowed_by("nbd://127.0.0.1:10809", tcp_prefix));  // no path: shorter than "/"
    CHECK_FALSE(allowed_by("nbds://127.0.0.1:10809/x", tcp_prefix));
    CHECK_FALSE(allowed_by("NBD://127.0.0.1:10809/x", tcp_prefix));

    // A prefix with an export name allows the names that start with it, byte for byte.
    CHECK(allowed_by("nbd://h:1/vm-1", "nbd://h:1/vm-"));
    CHECK(allowed_by("nbd://h:1/database", "nbd://h:1/data"));
    CHECK_FALSE(allowed_by("nbd://h:1/vm", "nbd://h:1/vm-"));
    CHECK_FALSE(allowed_by("nbd://h:1/VM-1", "nbd://h:1/vm-"));
    // Export names are compared as the server gets them, %XX decoded: vm%2D1 is vm-1.
    CHECK(allowed_by("nbd://h:1/vm%2D1", "nbd://h:1/vm-"));
    CHECK(allowed_by("nbd://h:1/vm-1", "nbd://h:1/vm%2d"));
    CHECK_FALSE(allowed_by("nbd://h:1/vm%2E1", "nbd://h:1/vm-"));

    // The query must be the prefix's exactly, TLS settings included.
    const std::string tls = "nbds+unix://alice@/?socket=/run/s&tls-psk-file=/etc/keys";
    CHECK(allowed_by("nbds+unix://alice@/disk?socket=/run/s&tls-psk-file=/etc/keys", tls));
    CHECK_FALSE(allowed_by("nbds+unix://alice@/disk?socket=/run/s&tls-psk-file=/etc/other", tls));
    CHECK_FALSE(allowed_by("nbds+unix://bob@/disk?socket=/run/s&tls-psk-file=/etc/keys", tls));
    CHECK_FALSE(allowed_by("nbds+unix://alice@/disk?tls-psk-file=/etc/keys&socket=/run/s", tls));
}

TEST_CASE("allowed_by: only NBD URIs, whatever the prefix", "[uri]")
{
    CHECK_FALSE(allowed_by("file:///etc/passwd", "file:///"));
    CHECK_FALSE(allowed_by("http://x/", "http://x/"));
    CHECK_FALSE(allowed_by("nbd+vsock:///x", "nbd+vsock:///"));
    CHECK_FALSE(allowed_by("nbd+ssh://h/x", "nbd+ssh://h/"));
    CHECK_FALSE(allowed_by("zero:1M", "zero:"));
    // A prefix that does not split allows nothing; neither does a URI that does not.
    CHECK_FALSE(allowed_by("nbd://h/x", "nbd://h/x#"));
    CHECK_FALSE(allowed_by("nbd://h/x", ""));
    CHECK_FALSE(allowed_by("", "nbd://h/"));
    CHECK_FALSE(allowed_by("nbd://h/x#y", "nbd://h/"));
    // The URI's scheme must be the prefix's: an NBD URI under a prefix of another scheme.
    CHECK_FALSE(allowed_by("nbd://h/x", "file://h/"));
}

TEST_CASE("allowed: any of the prefixes and none allows nothing", "[uri]")
{
    const std::vector<std::string> none;
    CHECK_FALSE(allowed("nbd://h:1/x", none));
    const std::vector<std::string> two{"nbd://h:1/a", "nbd+unix:///?socket=/s"};
    CHECK(allowed("nbd://h:1/ab", two));
    CHECK(allowed("nbd+unix:///anything?socket=/s", two));
    CHECK_FALSE(allowed("nbd://h:1/b", two));
    CHECK_FALSE(allowed("nbd+unix:///x?socket=/t", two));
    CHECK_FALSE(allowed("nbd://h:2/a", two));
}

TEST_CASE("zero_size: bytes, or K, M, G, T (powers of 1024) and nothing else", "[uri][zero]")
{
    CHECK(zero_size("zero:1") == 1u);
    CHECK(zero_size("zero:4096") == 4096u);
    CHECK(zero_size("zero:1K") == 1024u);
    CHECK(zero_size("zero:64M") == 64u << 20);
    CHECK(zero_size("zero:3G") == std::uint64_t{3} << 30);
    CHECK(zero_size("zero:16T") == std::uint64_t{16} << 40);
    CHECK(zero_size("zero:007") == 7u);
    // Large numbers parse (the daemon's 16 TiB bound applies after, as BAD_RANGE).
    CHECK(zero_size("zero:10000000000000000000") == std::uint64_t{10000000000000000000ull});
    CHECK(zero_size("zero:16777215T") == std::uint64_t{16777215} << 40);
    CHECK(zero_size("zero:17179869183G") == std::uint64_t{17179869183} << 30);
    for (const char* bad :
         {"zero:", "zero:0", "zero:0K", "zero:00", "zero:K", "zero:-1", "zero:+1", "zero:1.5G", "zero:1k", "zero:1m",
          "zero:1MB", "zero:1MiB", "zero:1P", "zero:1E", "zero: 1", "zero:1 ", "zero:0x10", "zero:1e6",
          "zero:18446744073709551616", "zero:99999999999999999999", "zero:184467440737095516150",
          "zero:16777216T", "zero:17179869184G", "zero:18446744073709551615K", "ZERO:1M", "zero1M", "zero://1M",
          "zeros:1M", " zero:1M", "", "zero"}) {
        INFO("'" << bad << "'");
        CHECK_FALSE(zero_size(bad));
    }
}

TEST_CASE("canonical_uri: one text per export however its name is spelt", "[uri]")
{
    CHECK(canonical_uri("nbd+unix:///disk?socket=/s") == "nbd+unix:///disk?socket=/s");
    CHECK(canonical_uri("nbd+unix:///%64isk?socket=/s") == "nbd+unix:///disk?socket=/s");
    CHECK(canonical_uri("nbd://h:1/a%2Fb") == "nbd://h:1/a/b");
    CHECK(canonical_uri("nbd://h:1/") == "nbd://h:1/");
    // Escapes that are not two hex digits, or that decode to a control character or a
    // space, make no URI.
    CHECK(canonical_uri("nbd://h:1/a%2") == "");
    CHECK(canonical_uri("nbd://h:1/a%zz") == "");
    CHECK(canonical_uri("nbd://h:1/a%00") == "");
    CHECK(canonical_uri("nbd://h:1/a%20b") == "");
    CHECK_FALSE(split_uri("nbd://h:1/a%0a"));
}
