// Creating the client's userfaultfd: full mode where permitted, user-mode-only otherwise.
#pragma once
#include <cstdint>

#include "pagerd/util/result.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::libclient {

struct Uffd {
    util::UniqueFd fd;
    std::uint64_t features = 0;   // enabled by UFFDIO_API
    std::uint64_t available = 0;  // what this kernel offers
    bool user_mode_only = false;
};

// The connection's main userfaultfd, or (async_wp) its second one, with
// UFFD_FEATURE_WP_ASYNC, for Shared regions with Tracking::Async.
// $PAGERD_UFFD_MODE=user-only skips the full-mode attempts (for testing the fallback).
// fork: ask for UFFD_FEATURE_EVENT_FORK (the daemon has capability FORK).
Result<Uffd> create_uffd(bool async_wp = false, bool fork = false);

}  // namespace pagerd::libclient
