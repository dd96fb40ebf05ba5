#include "config.hpp"

#include <fnmatch.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "size.hpp"

namespace pagerd::preload {
namespace {

constinit Config g_config;
constinit std::atomic<bool> g_loaded{false};
constinit char g_map[4096] = {};  // PAGERD_MAP's copy, cut at each ':'

void read_map(Config& c) noexcept
{
    const char* env = std::getenv("PAGERD_MAP");
    if (!env || !*env) return;
    if (std::strlen(env) >= sizeof g_map) {
        c.disabled = true;
        c.why_disabled = "PAGERD_MAP is longer than 4095 bytes";
        return;
    }
    std::strcpy(g_map, env);
    for (char* p = g_map; p && c.glob_count < k_max_globs;) {
        char* colon = std::strchr(p, ':');
        if (colon) *colon = '\0';
        if (*p) c.globs[c.glob_count++] = p;
        p = colon ? colon + 1 : nullptr;
    }
}

}  // namespace

const Config& load_config() noexcept
{
    if (g_loaded.load(std::memory_order_acquire)) return g_config;
    Config& c = g_config;
    const char* debug = std::getenv("PAGERD_DEBUG");
    c.debug = debug && *debug && std::strcmp(debug, "0") != 0;
    read_map(c);
    if (const char* s = std::getenv("PAGERD_MIN_SIZE"); s && *s) {
        if (auto n = parse_size(s)) {
            c.min_size = *n;
        } else {
            c.disabled = true;
            c.why_disabled = "PAGERD_MIN_SIZE is not a size";
        }
    }
    if (const char* s = std::getenv("PAGERD_TIMEOUT_MS"); s && *s) {
        auto n = parse_size(s);
        if (n && *n > 0 && *n <= 3600000) c.timeout_ms = static_cast<int>(*n);
    }
    g_loaded.store(true, std::memory_order_release);
    return c;
}

const Config* loaded_config() noexcept
{
    return g_loaded.load(std::memory_order_acquire) ? &g_config : nullptr;
}

bool path_wanted(const Config& c, const char* path) noexcept
{
    if (c.glob_count == 0) return true;
    for (std::size_t i = 0; i < c.glob_count; ++i)
        if (::fnmatch(c.globs[i], path, 0) == 0) return true;
    return false;
}

void say(const char* path, const char* what, const char* reason) noexcept
{
    const Config* c = loaded_config();
    if (!c || !c->debug) return;
    char line[1024];
    int n = std::snprintf(line, sizeof line, "pagerd-preload: %s: %s%s%s\n", path, what, reason ? ": " : "",
                          reason ? reason : "");
    if (n < 0) return;
    if (static_cast<std::size_t>(n) >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    for (const char* p = line; n > 0;) {
        const ssize_t w = ::write(STDERR_FILENO, p, static_cast<std::size_t>(n));
        if (w <= 0) break;
        p += w;
        n -= static_cast<int>(w);
    }
}

}  // namespace pagerd::preload
