// The library's settings, read from the environment once (at the first file mapping that
// needs them), and its debug lines. See docs/preload.md for the variables.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pagerd::preload {

inline constexpr std::uint64_t k_default_min_size = 1 << 20;
inline constexpr int k_default_timeout_ms = 2000;
inline constexpr std::size_t k_max_globs = 64;

struct Config {
    const char* globs[k_max_globs] = {};  // PAGERD_MAP split at ':'; none: every file
    std::size_t glob_count = 0;
    std::uint64_t min_size = k_default_min_size;  // PAGERD_MIN_SIZE
    int timeout_ms = k_default_timeout_ms;        // PAGERD_TIMEOUT_MS
    bool debug = false;                           // PAGERD_DEBUG set and not "0"
    bool disabled = false;                        // a setting made no sense: take nothing
    const char* why_disabled = "";
};

// Reads the environment the first time (the caller holds the engine's mutex).
const Config& load_config() noexcept;
// The settings once loaded, else nullptr (lock-free).
const Config* loaded_config() noexcept;

// True if `path` matches a glob (fnmatch without FNM_PATHNAME: '*' crosses '/'), or no glob is set.
bool path_wanted(const Config& c, const char* path) noexcept;

// "pagerd-preload: <path>: <what>[: <reason>]\n" on stderr with one write(2), if debugging.
void say(const char* path, const char* what, const char* reason = nullptr) noexcept;

}  // namespace pagerd::preload
