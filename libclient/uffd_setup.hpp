// Creating the client's userfaultfd: full mode where permitted, user-mode-only otherwise.
#pragma once
#include <cstdint>

#include "pagerd/util/result.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::libclient {

struct Uffd {
    util::UniqueFd fd;
    std::uint64_t features = 0;  // granted by UFFDIO_API
    bool user_mode_only = false;
};

// $PAGERD_UFFD_MODE=user-only skips the full-mode attempts (for testing the fallback).
Result<Uffd> create_uffd();

}  // namespace pagerd::libclient
