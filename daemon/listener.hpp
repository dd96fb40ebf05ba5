// The listening socket: stale-socket detection, bind, permissions.
#pragma once
#include <string>

#include "pagerd/util/result.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon {

struct Listener {
    util::UniqueFd fd;
    std::string path;
    bool owned = true;  // created here (and removed at exit), not passed by systemd
};

Result<Listener> open_listener(const std::string& path, unsigned mode);
// A listening socket passed by socket activation: made non-blocking, path read back.
Listener adopt_listener(util::UniqueFd fd);

}  // namespace pagerd::daemon
