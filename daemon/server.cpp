#include "server.hpp"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "pagerd/proto/wire.hpp"

namespace pagerd::daemon {
namespace {

sigset_t handled_signals()
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    return set;
}

}  // namespace

void block_signals()
{
    const sigset_t set = handled_signals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
}

Server::Server(const Config& config, Listener listener)
    : m_config(config), m_listener(std::move(listener)), m_ctx{config}
{
    m_ctx.page_size = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
    for (unsigned i = 0; i < config.workers; ++i) {
        m_workers.push_back(std::make_unique<Worker>(m_ctx, i));
        m_ctx.stats.push_back(&m_workers.back()->stats());
        m_ctx.workers.push_back(m_workers.back().get());
    }
}

Server::~Server()
{
    for (auto& w : m_workers) w->stop();
    for (auto& w : m_workers) w->join();
    ::unlink(m_listener.path.c_str());
}

int Server::run()
{
    const sigset_t set = handled_signals();
    util::UniqueFd sigfd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!sigfd) {
        spdlog::critical("signalfd: {}", std::strerror(errno));
        return 1;
    }
    for (auto& w : m_workers) w->start();
    spdlog::info("{} serving on {} with {} worker(s)", version_string(), m_listener.path,
                 m_workers.size());
    for (;;) {
        pollfd fds[2] = {{m_listener.fd.get(), POLLIN, 0}, {sigfd.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::critical("poll: {}", std::strerror(errno));
            return 1;
        }
        if (fds[1].revents) {
            signalfd_siginfo si{};
            while (::read(sigfd.get(), &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGHUP) {
                    spdlog::info("SIGHUP: nothing to reload");
                    continue;
                }
                spdlog::info("{} received: stopping", strsignal(static_cast<int>(si.ssi_signo)));
                m_listener.fd.reset();
                for (auto& w : m_workers) w->stop();
                for (auto& w : m_workers) w->join();
                spdlog::info("stopped");
                return 0;
            }
        }
        if (fds[0].revents) accept_all();
    }
}

void Server::accept_all()
{
    for (;;) {
        util::UniqueFd sock(::accept4(m_listener.fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!sock) {
            if (errno == EMFILE || errno == ENFILE)
                spdlog::warn("accept: {} (raise the descriptor limit)", std::strerror(errno));
            else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                spdlog::warn("accept: {}", std::strerror(errno));
            return;
        }
        ucred peer{};
        socklen_t len = sizeof peer;
        ::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len);
        if (m_ctx.connections.load() >= m_config.max_clients) {
            spdlog::warn("refusing pid {}: {} clients already connected", peer.pid, m_config.max_clients);
            proto::send_message(sock.get(),
                                proto::Message{0, proto::ErrorReply{proto::ErrorCode::LIMIT,
                                                  "too many clients (limit " +
                                                      std::to_string(m_config.max_clients) + ")"}},
                                {}, MSG_DONTWAIT);
            continue;
        }
        m_ctx.connections.fetch_add(1);
        least_loaded().adopt(std::move(sock), peer);
    }
}

Worker& Server::least_loaded()
{
    Worker* best = m_workers.front().get();
    for (auto& w : m_workers)
        if (w->client_count() < best->client_count()) best = w.get();
    return *best;
}

}  // namespace pagerd::daemon
