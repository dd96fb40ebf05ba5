#include "nbdkit.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace pagerd::test {

int free_tcp_port()
{
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("no free TCP port");
    ::close(s);
    return ntohs(a.sin_port);
}

Nbdkit::Nbdkit(const std::string& plugin, const std::vector<std::string>& args, Transport transport,
               const std::vector<std::string>& filters, const std::vector<std::string>& server_args)
    : m_plugin(plugin), m_args(args), m_filters(filters), m_server_args(server_args), m_transport(transport)
{
    if (m_transport == Transport::Tcp) m_port = free_tcp_port();
    start();
}

Nbdkit::~Nbdkit() { kill_hard(); }

void Nbdkit::start()
{
    const std::string pidfile = m_dir.file("nbdkit.pid");
    ::unlink(pidfile.c_str());
    std::vector<std::string> argv{"nbdkit", "--foreground", "--exit-with-parent", "-P", pidfile};
    if (m_transport == Transport::Unix) {
        argv.insert(argv.end(), {"-U", m_dir.file("nbd.sock")});
    } else {
        argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(m_port)});
    }
    argv.insert(argv.end(), m_server_args.begin(), m_server_args.end());
    for (const auto& f : m_filters) argv.push_back("--filter=" + f);
    argv.push_back(m_plugin);
    argv.insert(argv.end(), m_args.begin(), m_args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const std::string log = m_dir.file("nbdkit.log");
    m_pid = ::fork();
    if (m_pid < 0) throw std::runtime_error("fork failed");
    if (m_pid == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            ::dup2(fd, 1);
            ::dup2(fd, 2);
        }
        ::execvp("nbdkit", cargv.data());
        ::_exit(127);
    }
    // nbdkit writes its pid file once it accepts connections.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    struct stat st{};
    while (::stat(pidfile.c_str(), &st) != 0 || st.st_size == 0) {
        int status = 0;
        if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
            m_pid = -1;
            throw std::runtime_error("nbdkit exited at start: " + slurp(log));
        }
        if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("nbdkit did not start: " + slurp(log));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::string Nbdkit::uri(const std::string& export_name) const
{
    if (m_transport == Transport::Unix) return "nbd+unix:///" + export_name + "?socket=" + m_dir.file("nbd.sock");
    return "nbd://127.0.0.1:" + std::to_string(m_port) + "/" + export_name;
}

std::string Nbdkit::uri_with(const std::string& scheme, const std::string& user, const std::string& export_name,
                             const std::string& query) const
{
    if (m_transport == Transport::Unix)
        return scheme + "://" + user + "/" + export_name + "?socket=" + m_dir.file("nbd.sock") + query;
    return scheme + "://" + user + "127.0.0.1:" + std::to_string(m_port) + "/" + export_name + query;
}

void Nbdkit::kill_hard()
{
    if (m_pid <= 0) return;
    ::kill(m_pid, SIGKILL);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
}

void Nbdkit::restart()
{
    kill_hard();
    if (m_transport == Transport::Unix) ::unlink(m_dir.file("nbd.sock").c_str());
    start();
}

}  // namespace pagerd::test
