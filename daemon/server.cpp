#include "server.hpp"
#include "writeback.hpp"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "pagerd/proto/wire.hpp"
#include "fdstore.hpp"
#include "systemd.hpp"

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

Server::Server(const Config& config, Listener listener, CachePool& cache, Reload reload)
    : m_reload(std::move(reload)), m_config(config), m_listener(std::move(listener)), m_ctx{config}
{
    m_ctx.cache = &cache;
    m_ctx.nbd.connections = m_ctx.config.store_connections;
    m_ctx.nbd.timeout = std::chrono::milliseconds(m_ctx.config.store_timeout_ms);
    m_ctx.page_size = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
    for (unsigned i = 0; i < config.workers; ++i) {
        m_workers.push_back(std::make_unique<Worker>(m_ctx, i));
        m_ctx.stats.push_back(&m_workers.back()->stats());
        m_ctx.workers.push_back(m_workers.back().get());
    }
    // Shared regions in the page cache: write-back protects the pages in every client's
    // view (on every worker), and eviction queues write-backs of dirty pages.
    cache.set_view_protector([this](const Cache& c, std::uint64_t first, std::uint64_t count) {
        bool ok = true;
        for (Worker* w : m_ctx.workers) ok = w->protect_views(c, first, count) && ok;
        return ok;
    });
    cache.set_writeback_queue([this](std::shared_ptr<Cache> c) {
        m_ctx.workers[c->id() % m_ctx.workers.size()]->queue_cache_writeback(std::move(c));
    });
}

Server::~Server()
{
    for (auto& w : m_workers) w->stop();
    for (auto& w : m_workers) w->join();
    m_ctx.cache->set_view_protector(nullptr);
    m_ctx.cache->set_writeback_queue(nullptr);
    if (m_listener.owned) ::unlink(m_listener.path.c_str());
}

void Server::resume(std::vector<std::unique_ptr<Client>> clients)
{
    for (auto& c : clients) {
        if (c->serial >= m_ctx.next_client_serial.load()) m_ctx.next_client_serial = c->serial + 1;
        c->restored = true;
        m_ctx.connections.fetch_add(1);
        least_loaded().adopt(std::move(c));
    }
}

std::string Server::status_line() const
{
    std::uint64_t clients = 0, regions = 0, faults = 0;
    for (const WorkerStats* w : m_ctx.stats) {
        clients += w->clients.load(std::memory_order_relaxed);
        regions += w->regions.load(std::memory_order_relaxed);
        faults += w->faults.load(std::memory_order_relaxed);
    }
    return "serving " + std::to_string(clients) + " client(s), " + std::to_string(regions) + " region(s), " +
           std::to_string(faults) + " fault(s) served";
}

bool Server::workers_turning(Clock::duration within) const
{
    const auto now = Clock::now();
    for (const auto& w : m_workers)
        if (now - w->last_turn() > within) return false;
    return true;
}

// The watchdog ping comes from the serving path: only while every worker's loop keeps
// turning. A stuck worker stops the pings and systemd restarts the daemon.
void Server::tick()
{
    m_last_tick = Clock::now();
    systemd::notify_status(status_line());
    const auto wd = systemd::watchdog_interval();
    if (wd.count() == 0) return;
    if (workers_turning(wd / 2)) {
        systemd::notify_watchdog();
        if (m_watchdog_withheld) spdlog::info("every worker turns again; watchdog pings resumed");
        m_watchdog_withheld = false;
    } else if (!m_watchdog_withheld) {
        spdlog::error("a worker has not turned for {} ms: withholding watchdog pings",
                      std::chrono::duration_cast<std::chrono::milliseconds>(wd / 2).count());
        m_watchdog_withheld = true;
    }
}

void Server::reload()
{
    systemd::notify_reloading();
    auto fresh = m_reload ? m_reload() : std::nullopt;
    if (!fresh) {
        spdlog::error("SIGHUP: the configuration is invalid or cannot be read; keeping the current one");
    } else {
        spdlog::set_level(spdlog::level::from_str(fresh->log_level));
        m_ctx.limits.set(*fresh);
        m_ctx.set_allowed_stores(fresh->allow_store);  // new maps only: regions mapped stay
        const std::uint64_t budget = fresh->memory_max ? fresh->memory_max : CachePool::default_budget();
        if (budget != m_ctx.cache->figures().budget) {
            spdlog::info("SIGHUP: page cache budget {} bytes", budget);
            m_ctx.cache->set_budget(budget);
        }
        if (fresh->workers != m_config.workers || fresh->fault_block_bytes != m_config.fault_block_bytes ||
            fresh->staging_buffers != m_config.staging_buffers || fresh->socket_path != m_config.socket_path)
            spdlog::warn("SIGHUP: socket, workers, fault-block and staging-buffers change only with a restart");
        spdlog::info("SIGHUP: configuration reloaded (log level {}, max clients {}, max regions per client {}, "
                     "{} store prefix(es) allowed)",
                     fresh->log_level, fresh->max_clients, fresh->max_regions_per_client, fresh->allow_store.size());
    }
    systemd::notify_ready();
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
    systemd::notify_ready();
    const auto wd = systemd::watchdog_interval();
    const auto tick_every = std::chrono::milliseconds(
        wd.count() ? std::min<long>(1000, std::chrono::duration_cast<std::chrono::milliseconds>(wd / 4).count()) : 1000);
    tick();
    for (;;) {
        pollfd fds[2] = {{m_listener.fd.get(), POLLIN, 0}, {sigfd.get(), POLLIN, 0}};
        if (::poll(fds, 2, static_cast<int>(tick_every.count())) < 0 && errno != EINTR) {
            spdlog::critical("poll: {}", std::strerror(errno));
            return 1;
        }
        if (Clock::now() - m_last_tick >= tick_every) tick();
        if (fds[1].revents) {
            signalfd_siginfo si{};
            while (::read(sigfd.get(), &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGHUP) {
                    reload();
                    continue;
                }
                spdlog::info("{} received: stopping", strsignal(static_cast<int>(si.ssi_signo)));
                systemd::notify_stopping();
                m_listener.fd.reset();
                // Workers close their clients: faults in flight finish, dirty pages of
                // Shared regions are written back, then the workers return. Under the
                // descriptor store the clients stay there for the next daemon.
                // Kept for the next daemon: the caches stay in the store, with their pages.
                // What Shared clients wrote into them is written to the files first, while
                // every client's view is still there to protect (systemd releases the store
                // if this is a stop rather than a restart).
                if (fdstore::enabled()) {
                    write_back_caches();
                    m_ctx.cache->keep_for_restart();
                }
                for (auto& w : m_workers) w->stop(fdstore::enabled());
                for (auto& w : m_workers) w->join();
                spdlog::info("stopped");
                return 0;
            }
        }
        if (fds[0].revents) accept_all();
    }
}

void Server::write_back_caches()
{
    Writeback wb(m_ctx.page_size);
    for (const auto& c : m_ctx.cache->caches()) {
        if (!c->writable()) continue;
        const auto serial = c->lock_writeback();
        const auto runs = c->collect(0, (c->size() + m_ctx.page_size - 1) / m_ctx.page_size);
        const auto out = wb.write(*c, runs);
        c->written(runs, out.error == 0);
        if (out.error)
            spdlog::error("cache {}: writing back before the stop failed: {}; the pages stay dirty in the store",
                          c->id(), std::strerror(out.error));
        else if (out.pages)
            spdlog::info("cache {}: wrote back {} page(s) before the stop", c->id(), out.pages);
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
        const unsigned max_clients = m_ctx.limits.max_clients.load();
        if (m_ctx.connections.load() >= max_clients) {
            spdlog::warn("refusing pid {}: {} clients already connected", peer.pid, max_clients);
            proto::send_message(sock.get(),
                                proto::Message{0, proto::ErrorReply{proto::ErrorCode::LIMIT,
                                                  "too many clients (limit " +
                                                      std::to_string(max_clients) + ")"}},
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
