// What pagerd says to and takes from systemd (libsystemd): the socket it passes
// (LISTEN_FDS), readiness, status, watchdog and stopping (NOTIFY_SOCKET). Every call is a
// no-op when pagerd does not run under systemd.
#pragma once
#include <chrono>
#include <optional>
#include <string>

#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon::systemd {

// The listening SOCK_SEQPACKET socket passed by socket activation, if any. Other passed
// descriptors are closed with a warning.
std::optional<util::UniqueFd> take_listening_socket();

void notify_ready();
void notify_status(const std::string& status);
void notify_watchdog();
void notify_stopping();
void notify_reloading();
// The watchdog interval systemd expects pings within, or zero when it expects none.
std::chrono::microseconds watchdog_interval();

}  // namespace pagerd::daemon::systemd
