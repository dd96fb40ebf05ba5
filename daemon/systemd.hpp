// What pagerd says to and takes from systemd (libsystemd): the socket it passes
// (LISTEN_FDS), readiness, status, watchdog and stopping (NOTIFY_SOCKET). Every call is a
// no-op when pagerd does not run under systemd.
#pragma once
#include <chrono>
#include <map>
#include <optional>
#include <string>

#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon::systemd {

// What systemd passed at start (LISTEN_FDS): the listening SOCK_SEQPACKET socket of
// socket activation, and the named descriptors of the descriptor store.
struct Passed {
    std::optional<util::UniqueFd> listening;
    std::map<std::string, util::UniqueFd> stored;
};
Passed take_passed();

void notify_ready();
void notify_status(const std::string& status);
void notify_watchdog();
void notify_stopping();
void notify_reloading();
// The watchdog interval systemd expects pings within, or zero when it expects none.
std::chrono::microseconds watchdog_interval();

}  // namespace pagerd::daemon::systemd
