// A real NBD server for the tests: nbdkit (Debian's), on a Unix socket or a loopback TCP
// port, with the plugin and filters a test names.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "harness.hpp"

namespace pagerd::test {

class Nbdkit {
public:
    enum class Transport { Unix, Tcp };
    // nbdkit [--filter=F]... PLUGIN ARGS..., serving export "" (any name) until destroyed.
    // Waits until it accepts connections.
    // server_args: nbdkit's own options (--tls=require, -r, ...), before the plugin.
    Nbdkit(const std::string& plugin, const std::vector<std::string>& args, Transport transport = Transport::Unix,
           const std::vector<std::string>& filters = {}, const std::vector<std::string>& server_args = {});
    ~Nbdkit();
    Nbdkit(const Nbdkit&) = delete;
    Nbdkit& operator=(const Nbdkit&) = delete;

    // nbd+unix:///?socket=PATH or nbd://127.0.0.1:PORT/ (export name appended)
    std::string uri(const std::string& export_name = "") const;
    // The same server under another scheme (nbds, nbds+unix), with a user ("alice@") and
    // query parameters appended ("&tls-psk-file=..." on a Unix socket, "?..." on TCP).
    std::string uri_with(const std::string& scheme, const std::string& user, const std::string& export_name,
                         const std::string& query) const;
    // The prefix to pass to pagerd's --allow-store for this server.
    std::string allow_prefix() const { return uri(); }
    pid_t pid() const { return m_pid; }
    bool alive() const;           // the server process still runs
    std::string log() const;      // what nbdkit wrote to stdout and stderr
    void kill_hard();  // SIGKILL: the server goes away
    // Starts again on the same socket or port (after kill_hard()).
    void restart();

private:
    void start();
    TempDir m_dir;
    std::string m_plugin;
    std::vector<std::string> m_args, m_filters, m_server_args;
    Transport m_transport;
    int m_port = 0;
    pid_t m_pid = -1;
};

// pagerd's arguments `extra`, and --allow-store for the exports of `s`.
std::vector<std::string> allow(const Nbdkit& s, std::vector<std::string> extra = {});
const char* transport_name(Nbdkit::Transport t);  // "unix", "tcp"

// A free loopback TCP port (bound and released: good enough for a test).
int free_tcp_port();

// ---- bytes -------------------------------------------------------------------------------

// Bytes 8w..8w+7 of a file made with `seed` (harness.hpp pattern_byte), as a little-endian
// u64: the same bytes, eight at a time.
std::uint64_t pattern_word(std::uint64_t w, std::uint32_t seed);
// make_file(path, size, seed), the same bytes, made eight at a time (64 MiB in a blink).
void make_pattern_file(const std::string& path, std::uint64_t size, std::uint32_t seed);
// Bytes of [p, p + len) that differ from pattern_byte(base + i, seed).
std::uint64_t pattern_mismatches(const void* p, std::uint64_t len, std::uint64_t base, std::uint32_t seed);
// Bytes of [p, p + len) that are not 0.
std::uint64_t nonzero_bytes(const void* p, std::uint64_t len);

// ---- servers that are not there ----------------------------------------------------------

// A Unix socket that listens and never accepts: a connection to it is made by the kernel
// (the backlog) and then nothing comes, not even NBD's greeting: a server that hangs.
class SilentServer {
public:
    SilentServer();
    ~SilentServer();
    SilentServer(const SilentServer&) = delete;
    SilentServer& operator=(const SilentServer&) = delete;
    std::string uri(const std::string& export_name = "") const;  // nbd+unix:///EXPORT?socket=PATH
    const std::string& path() const { return m_path; }

private:
    TempDir m_dir;
    std::string m_path;
    int m_fd = -1;
};

// ---- a client in a process of its own ---------------------------------------------------

// A pagerd client in a child process, for what the test process must not do itself: die
// by SIGBUS, or hold a connection that a forked child's own connection would follow
// (harness.hpp: a child that connects must be forked while this process has no connection
// open). So construct every StoreClient of a test before this process connects.
//
// The child obeys one order per line and answers one line:
//   connect SOCKET                          ok | fail MESSAGE
//   map URI OFFSET LENGTH ACCESS PREFETCH   ok INDEX | error CODE MESSAGE   (ACCESS ro, pw, sh;
//                                           PREFETCH seq, none, all; CODE as daemon_error_name,
//                                           or errno:N)
//   check INDEX OFF LEN SEED                ok | wrong N: bytes [OFF, OFF + LEN) of region INDEX
//                                           against the pattern at the store offset (SEED z:
//                                           zeros). A SIGBUS kills the child.
//   scan INDEX OFF LEN SEED                 ok RIGHT SIGBUS WRONG: the same page by page,
//                                           counting pages that raised SIGBUS instead of dying
//   write INDEX OFF LEN SEED                ok: writes the pattern (SEED at store offsets)
//   flush INDEX                             ok PAGES | error CODE MESSAGE
//   unmap INDEX                             ok | error CODE MESSAGE
//   exit                                    the child exits 0 (so does it at end of input)
class StoreClient {
public:
    StoreClient();
    ~StoreClient();  // exit, wait (a child that will not go is killed)
    StoreClient(const StoreClient&) = delete;
    StoreClient& operator=(const StoreClient&) = delete;

    // Sends an order, returns the answer; "" when the child ended first (see wait()),
    // "timeout" when no answer came in time.
    std::string ask(const std::string& order, std::chrono::milliseconds timeout = std::chrono::seconds(60));
    // The same in two steps, for a parent that acts while the child works on an order.
    bool send(const std::string& order);
    std::string answer(std::chrono::milliseconds timeout = std::chrono::seconds(60));
    // How the child ended: its raw wait status (waits up to timeout, then kills it).
    int wait(std::chrono::milliseconds timeout = std::chrono::seconds(10));
    pid_t pid() const { return m_pid; }
    bool alive() const;           // the server process still runs
    std::string log() const;      // what nbdkit wrote to stdout and stderr

private:
    int m_down = -1, m_up = -1;  // our ends: orders, answers
    pid_t m_pid = -1;
    bool m_waited = false;
    int m_status = -1;
};

// "killed by signal 7 (Bus error)", "exit 3", ...
std::string describe_status(int status);

}  // namespace pagerd::test
