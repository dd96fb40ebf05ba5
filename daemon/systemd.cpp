#include "systemd.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace pagerd::daemon::systemd {

Passed take_passed()
{
    Passed out;
    char** names = nullptr;
    const int n = sd_listen_fds_with_names(1, &names);  // 1: unset LISTEN_* for children
    for (int i = 0; i < n; ++i) {
        util::UniqueFd fd(SD_LISTEN_FDS_START + i);
        const std::string name = names && names[i] ? names[i] : "unknown";
        if (!out.listening && sd_is_socket_unix(fd.get(), SOCK_SEQPACKET, 1, nullptr, 0) > 0) {
            spdlog::info("using the socket passed by systemd ({})", name);
            out.listening = std::move(fd);
        } else if (name.size() > 1 && name[0] == 'c') {
            out.stored.emplace(name, std::move(fd));  // a client's, from the descriptor store
        } else {
            spdlog::warn("closing a descriptor passed by systemd that pagerd does not know ({})", name);
        }
    }
    if (names)
        for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
    return out;
}

void notify_ready() { sd_notify(0, "READY=1"); }
void notify_status(const std::string& status) { sd_notify(0, ("STATUS=" + status).c_str()); }
void notify_watchdog() { sd_notify(0, "WATCHDOG=1"); }
void notify_stopping() { sd_notify(0, "STOPPING=1"); }
void notify_reloading() { sd_notify(0, "RELOADING=1"); }

std::chrono::microseconds watchdog_interval()
{
    std::uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? std::chrono::microseconds(usec) : std::chrono::microseconds(0);
}

}  // namespace pagerd::daemon::systemd
