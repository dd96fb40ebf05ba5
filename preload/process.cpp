#include "process.hpp"

#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "engine.hpp"
#include "table.hpp"

namespace pagerd::preload {

constinit thread_local bool t_inside = false;

namespace {

using libclient::Connection;

// This process's connection (a forked child makes its own; the parent's stays with the
// regions it mapped). Never destroyed: at exit, other threads may still read its regions.
constinit Connection* g_conn = nullptr;
constinit pid_t g_conn_pid = 0;
constinit bool g_conn_unusable = false;  // a request timed out or the daemon went away
constinit pid_t g_failed_pid = 0;        // connecting failed in this process: not retried
constinit char g_failure[256] = {};
constinit bool g_fork_handlers = false;

// One mutex for every slow path. fork(): the child gets it unlocked (child_reset); once
// libclient registered its own fork handlers (at the first connect), ours are registered
// after them, so that ours run first before fork and take this mutex before libclient's.
constinit pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;

void child_reset() noexcept
{
    constexpr pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_mutex = fresh;
}
// Set in the parent before each fork: its connection had timed out or was lost, so that its
// child does not wait for the daemon again to map the parent's regions anew (fork.cpp).
constinit bool g_gave_up_at_fork = false;

void before_fork() noexcept
{
    ::pthread_mutex_lock(&g_mutex);
    g_gave_up_at_fork = g_conn && g_conn_pid == ::getpid() && (g_conn_unusable || !g_conn->daemon_alive());
}
void after_fork_parent() noexcept { ::pthread_mutex_unlock(&g_mutex); }
// Runs after libclient's own handler (registered before it), one thread in the child,
// before fork() returns there. Never in a child of vfork() or posix_spawn().
void after_fork_child() noexcept
{
    child_reset();
    remap_in_child();
    drop_absent();
}

}  // namespace

Lock::Lock() noexcept { ::pthread_mutex_lock(&g_mutex); }
Lock::~Lock() { ::pthread_mutex_unlock(&g_mutex); }

const Config& config() noexcept
{
    if (const Config* c = loaded_config()) return *c;
    Lock lock;
    if (const Config* c = loaded_config()) return *c;
    ::pthread_atfork(nullptr, nullptr, child_reset);
    return load_config();
}

// The connection for a new mapping in this process, or nullptr and why.
Connection* connection(char* why, std::size_t n) noexcept
{
    const pid_t pid = ::getpid();
    if (g_conn && g_conn_pid == pid) {
        if (!g_conn_unusable && g_conn->daemon_alive()) return g_conn;
        std::snprintf(why, n, "the connection to pagerd timed out or was lost (not retried)");
        return nullptr;
    }
    if (g_failed_pid == pid) {
        std::snprintf(why, n, "%s (not retried)", g_failure);
        return nullptr;
    }
    libclient::ConnectOptions options;
    options.timeout_ms = load_config().timeout_ms;  // loaded already: a mapping got here
    auto made = Connection::connect(options);
    if (!made) {
        g_failed_pid = pid;
        std::snprintf(g_failure, sizeof g_failure, "%s", made.error().message.c_str());
        std::snprintf(why, n, "%s", g_failure);
        return nullptr;
    }
    g_conn = std::move(made).value().release();
    g_conn_pid = pid;
    g_conn_unusable = false;
    if (!g_fork_handlers) {
        ::pthread_atfork(before_fork, after_fork_parent, after_fork_child);
        g_fork_handlers = true;
    }
    return g_conn;
}

Connection* child_connection(char* why, std::size_t n) noexcept
{
    if (g_gave_up_at_fork) {
        std::snprintf(why, n, "the parent's connection to pagerd had timed out or was lost (not retried)");
        return nullptr;
    }
    return connection(why, n);
}

// After a failed request: is the connection still worth asking?
void note_failure(Connection* conn, const Error& e) noexcept
{
    if (e.is_errno(ETIMEDOUT) || e.is_errno(ENOTCONN) || e.is_errno(ECONNRESET) || e.is_errno(EPIPE) ||
        !conn->daemon_alive())
        g_conn_unusable = true;
}

}  // namespace pagerd::preload
