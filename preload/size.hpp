// Byte sizes as pagerd-run and PAGERD_MIN_SIZE spell them: digits, then optionally K, M or G
// (powers of 1024; "KiB", "MB" and lower case too). No allocation: the library parses it.
#pragma once
#include <cstdint>
#include <optional>

namespace pagerd::preload {

inline std::optional<std::uint64_t> parse_size(const char* s) noexcept
{
    if (!s || *s < '0' || *s > '9') return std::nullopt;
    std::uint64_t n = 0;
    for (; *s >= '0' && *s <= '9'; ++s) {
        if (n > (UINT64_MAX - 9) / 10) return std::nullopt;
        n = n * 10 + static_cast<std::uint64_t>(*s - '0');
    }
    unsigned shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case '\0': return n;
    default: return std::nullopt;
    }
    ++s;
    if (*s == 'i' && s[1] == 'B') s += 2;
    else if (*s == 'B') ++s;
    if (*s != '\0' || n > (UINT64_MAX >> shift)) return std::nullopt;
    return n << shift;
}

}  // namespace pagerd::preload
