// NBD stores, the allow list: the daemon connects to an export only when a --allow-store
// prefix allows its URI (same scheme, authority and query; the prefix's path a prefix of
// the URI's), and answers every other URI BAD_DESCRIPTOR without connecting anywhere. The
// servers run nbdkit's log filter, whose "Connect export=..." lines say who connected to
// them, and for which export. (daemon/store/uri.hpp's rules one by one: tests/daemon/test_uri.cpp.)
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "harness.hpp"
#include "nbdkit.hpp"
#include "pagerd/proto/constants.hpp"

using namespace pagerd;
using namespace pagerd::test;
using libclient::Access;

namespace {

constexpr std::uint64_t k_mib = 1024 * 1024;

// A file server that logs its clients' connections to `log`.
std::unique_ptr<Nbdkit> logged_server(const std::string& file, const std::string& log, Nbdkit::Transport t)
{
    return std::make_unique<Nbdkit>("file", std::vector<std::string>{file, "logfile=" + log}, t,
                                     std::vector<std::string>{"log"});
}

// The export names of the connections the server's log shows, in order.
std::vector<std::string> connected_exports(const std::string& log)
{
    std::vector<std::string> out;
    // export=NAME, or export="NAME" when it is empty or holds a space or a quote
    const std::string text = slurp(log), key = " Connect export=";
    for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
        auto from = at + key.size();
        const bool quoted = text[from] == '"';
        if (quoted) ++from;
        const auto to = text.find(quoted ? '"' : ' ', from);
        out.push_back(text.substr(from, to - from));
    }
    return out;
}

// Maps 1 MiB of uri; "" when it worked, else the error's code name and message.
std::string try_map(libclient::Connection& c, const std::string& uri, std::uint32_t seed = 0)
{
    libclient::MapOptions o;
    o.length = k_mib;
    auto r = c.map_store(uri, o);
    if (!r) {
        const auto& e = r.error();
        return std::string(e.is_daemon() ? libclient::daemon_error_name(static_cast<libclient::DaemonError>(e.code))
                                         : "not-daemon") +
               ": " + e.message;
    }
    const bool right = seed == 0 || pattern_mismatches(r->addr, k_mib, 0, seed) == 0;
    (void)c.unmap(*r);
    return right ? "" : "wrong bytes";
}

bool refused_not_allowed(const std::string& said)
{
    return said.rfind("BAD_DESCRIPTOR: ", 0) == 0 && said.find("not allowed") != std::string::npos;
}

}  // namespace

TEST_CASE("a daemon without --allow-store refuses every NBD URI and connects to nothing", "[nbd][allow]")
{
    TempDir dir;
    make_pattern_file(dir.file("data"), 4 * k_mib, 401);
    auto unix_server = logged_server(dir.file("data"), dir.file("unix.log"), Nbdkit::Transport::Unix);
    auto tcp_server = logged_server(dir.file("data"), dir.file("tcp.log"), Nbdkit::Transport::Tcp);
    Daemon d;
    auto conn = d.connect();
    for (const auto& uri : {unix_server->uri(), unix_server->uri("x"), tcp_server->uri(), tcp_server->uri("x")}) {
        const std::string said = try_map(*conn, uri);
        INFO(uri << " -> " << said);
        CHECK(refused_not_allowed(said));
    }
    auto stores = conn->stores();
    REQUIRE(stores);
    CHECK(stores->empty());
    CHECK(connected_exports(dir.file("unix.log")).empty());
    CHECK(connected_exports(dir.file("tcp.log")).empty());
    CHECK(conn->ping());
}

TEST_CASE("an --allow-store prefix of an export on a Unix socket: no other socket, query, scheme, authority or export",
          "[nbd][allow]")
{
    TempDir dir;
    make_pattern_file(dir.file("data"), 4 * k_mib, 403);
    auto allowed = logged_server(dir.file("data"), dir.file("allowed.log"), Nbdkit::Transport::Unix);
    auto other = logged_server(dir.file("data"), dir.file("other.log"), Nbdkit::Transport::Unix);
    const std::string prefix = allowed->uri("a");  // nbd+unix:///a?socket=S
    Daemon d({"--allow-store=" + prefix});
    auto conn = d.connect();
    const std::string socket_query = prefix.substr(prefix.find('?'));  // ?socket=S
    const std::vector<std::string> refused{
        other->uri("a"),                                 // another socket (a live server)
        prefix + "&tls-psk-file=/etc/shadow",            // a query parameter added
        prefix + "&socket=/elsewhere",                   // the socket named twice
        "nbd+unix:///a" + socket_query + "/",            // the query changed
        "nbd+unix:///a",                                 // the query dropped
        "nbds+unix:///a" + socket_query,                 // another scheme (TLS)
        "nbd+unix:///a" + socket_query + "#frag",       // a fragment
        "nbd+unix://localhost/a" + socket_query,         // an authority added
        "nbd+unix://user@/a" + socket_query,             // a user added
        allowed->uri("b"),                               // an export outside the prefix
        allowed->uri(""),                                // a shorter path than the prefix
        allowed->uri("A"),                               // case matters
        "NBD+UNIX:///a" + socket_query,                  // so it does in the scheme
        "nbd+unix:///a " + socket_query,                 // a space
        "nbd+unix:///a\\" + socket_query,                // a backslash
        "nbd+unix:///a\n" + socket_query,                // a control character
    };
    for (const auto& uri : refused) {
        const std::string said = try_map(*conn, uri);
        INFO("'" << uri << "' -> " << said);
        CHECK(said.rfind("BAD_DESCRIPTOR: ", 0) == 0);
    }
    auto stores = conn->stores();
    REQUIRE(stores);
    CHECK(stores->empty());
    CHECK(connected_exports(dir.file("allowed.log")).empty());
    CHECK(connected_exports(dir.file("other.log")).empty());
    // The prefix itself, and exports whose names start with it: connected, read right.
    for (const char* name : {"a", "abc", "a/b"}) {
        const std::string said = try_map(*conn, allowed->uri(name), 403);
        INFO(allowed->uri(name) << " -> " << said);
        CHECK(said.empty());
    }
    const auto exports = connected_exports(dir.file("allowed.log"));
    REQUIRE_FALSE(exports.empty());
    for (const auto& e : exports) CHECK((e == "a" || e == "abc" || e == "a/b"));
    CHECK(connected_exports(dir.file("other.log")).empty());
}

TEST_CASE("an --allow-store prefix of a TCP server: that address and port only, no user, no query", "[nbd][allow]")
{
    TempDir dir;
    make_pattern_file(dir.file("data"), 4 * k_mib, 405);
    auto allowed = logged_server(dir.file("data"), dir.file("allowed.log"), Nbdkit::Transport::Tcp);
    auto other = logged_server(dir.file("data"), dir.file("other.log"), Nbdkit::Transport::Tcp);
    const std::string prefix = allowed->allow_prefix();  // nbd://127.0.0.1:PORT/
    const std::string host_port = prefix.substr(6, prefix.size() - 7);  // 127.0.0.1:PORT
    const std::string port = host_port.substr(host_port.find(':') + 1);
    Daemon d({"--allow-store=" + prefix});
    auto conn = d.connect();
    const std::vector<std::string> refused{
        other->uri("x"),                                   // another port (a live server)
        "nbd://localhost:" + port + "/x",                  // another name for the host
        "nbd://127.0.0.2:" + port + "/x",                  // another address
        "nbd://user@" + host_port + "/x",                  // a user added
        "nbd://" + host_port + "/x?socket=/tmp/s",         // a query added
        "nbd://" + host_port + "/x?tls=require",           // so
        "nbds://" + host_port + "/x",                      // TLS
        "nbd+unix:///x?socket=/tmp/s",                     // a Unix socket
        "nbd://" + host_port,                              // no path: shorter than the prefix's "/"
        "nbd://[::1]:" + port + "/x",                      // IPv6 loopback
    };
    for (const auto& uri : refused) {
        const std::string said = try_map(*conn, uri);
        INFO("'" << uri << "' -> " << said);
        CHECK(said.rfind("BAD_DESCRIPTOR: ", 0) == 0);
    }
    CHECK(connected_exports(dir.file("allowed.log")).empty());
    CHECK(connected_exports(dir.file("other.log")).empty());
    for (const char* name : {"", "x", "any/name"}) {
        const std::string said = try_map(*conn, allowed->uri(name), 405);
        INFO(allowed->uri(name) << " -> " << said);
        CHECK(said.empty());
    }
    const auto exports = connected_exports(dir.file("allowed.log"));
    REQUIRE_FALSE(exports.empty());
    for (const auto& e : exports) CHECK((e == "" || e == "x" || e == "any/name"));
    CHECK(connected_exports(dir.file("other.log")).empty());
}

TEST_CASE("URIs of schemes the daemon does not know are refused whatever the allow list", "[nbd][allow]")
{
    TempDir dir;
    make_pattern_file(dir.file("data"), 4 * k_mib, 407);
    auto server = logged_server(dir.file("data"), dir.file("server.log"), Nbdkit::Transport::Tcp);
    const std::string host_port = server->allow_prefix().substr(6, server->allow_prefix().size() - 7);
    // Prefixes that are not NBD's allow nothing either.
    Daemon d({"--allow-store=" + server->allow_prefix(), "--allow-store=file:///", "--allow-store=http://x",
              "--allow-store=nbd+vsock:///", "--allow-store=nbd+ssh://" + host_port + "/"});
    auto conn = d.connect();
    for (const std::string& uri : std::vector<std::string>{
             "file:///etc/passwd", "file:///", "http://x", "http://x/", "https://" + host_port + "/",
          "nbd+vsock:///x", "nbd+ssh://" + host_port + "/x", "/etc/passwd", "nbd:" + host_port, "zero",
          "zero:", "nbd//" + host_port + "/", "://" + host_port + "/", "nbd://" + host_port + "/#",
          "nbd?://" + host_port + "/?://"}) {
        const std::string said = try_map(*conn, uri);
        INFO("'" << uri << "' -> " << said);
        CHECK(said.rfind("BAD_DESCRIPTOR: ", 0) == 0);
    }
    CHECK(connected_exports(dir.file("server.log")).empty());
    auto stores = conn->stores();
    REQUIRE(stores);
    CHECK(stores->empty());
    // The NBD prefix still works.
    CHECK(try_map(*conn, server->uri("y"), 407).empty());
}
