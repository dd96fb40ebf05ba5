// A real NBD server for the tests: nbdkit (Debian's), on a Unix socket or a loopback TCP
// port, with the plugin and filters a test names.
#pragma once
#include <sys/types.h>

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

// A free loopback TCP port (bound and released: good enough for a test).
int free_tcp_port();

}  // namespace pagerd::test
