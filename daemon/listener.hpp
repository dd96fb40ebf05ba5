// The listening socket: stale-socket detection, bind, permissions.
#pragma once
#include <string>

#include "pagerd/util/result.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon {

struct Listener {
    util::UniqueFd fd;
    std::string path;
};

Result<Listener> open_listener(const std::string& path, unsigned mode);

}  // namespace pagerd::daemon
