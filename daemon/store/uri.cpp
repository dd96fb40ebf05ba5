#include "uri.hpp"

#include <cctype>
#include <limits>

namespace pagerd::daemon::store {

bool is_nbd_scheme(std::string_view s) { return s == "nbd" || s == "nbds" || s == "nbd+unix" || s == "nbds+unix"; }

std::optional<UriParts> split_uri(std::string_view uri)
{
    for (char ch : uri)
        if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f || ch == '#' || ch == '\\') return std::nullopt;
    const auto colon = uri.find("://");
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    UriParts p;
    p.scheme = uri.substr(0, colon);
    for (char ch : p.scheme)  // RFC 3986: letters, digits, "+", "-", "."
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '+' && ch != '-' && ch != '.') return std::nullopt;
    std::string_view rest = uri.substr(colon + 3);
    const auto q = rest.find('?');
    if (q != std::string_view::npos) {
        p.query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    const auto slash = rest.find('/');
    p.authority = rest.substr(0, slash);
    p.path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
    for (std::size_t i = 0; i < p.path.size(); ++i) {
        if (p.path[i] != '%') {
            p.export_path.push_back(p.path[i]);
            continue;
        }
        auto hex = [](char ch) -> int {
            if (ch >= '0' && ch <= '9') return ch - '0';
            if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
            if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
            return -1;
        };
        if (i + 2 >= p.path.size()) return std::nullopt;
        const int hi = hex(p.path[i + 1]), lo = hex(p.path[i + 2]);
        if (hi < 0 || lo < 0) return std::nullopt;
        const auto byte = static_cast<unsigned char>(hi * 16 + lo);
        if (byte <= 0x20 || byte == 0x7f) return std::nullopt;
        p.export_path.push_back(static_cast<char>(byte));
        i += 2;
    }
    return p;
}

std::string canonical_uri(std::string_view uri)
{
    const auto p = split_uri(uri);
    if (!p) return {};
    return p->scheme + "://" + p->authority + p->export_path + (p->query.empty() ? "" : "?" + p->query);
}

bool allowed_by(std::string_view uri, std::string_view prefix)
{
    const auto u = split_uri(uri), p = split_uri(prefix);
    if (!u || !p || !is_nbd_scheme(u->scheme)) return false;
    return u->scheme == p->scheme && u->authority == p->authority && u->query == p->query &&
           u->export_path.compare(0, p->export_path.size(), p->export_path) == 0;
}

bool allowed(std::string_view uri, const std::vector<std::string>& prefixes)
{
    for (const auto& p : prefixes)
        if (allowed_by(uri, p)) return true;
    return false;
}

std::optional<std::uint64_t> zero_size(std::string_view uri)
{
    constexpr std::string_view k_scheme = "zero:";
    if (uri.substr(0, k_scheme.size()) != k_scheme) return std::nullopt;
    std::string_view n = uri.substr(k_scheme.size());
    unsigned shift = 0;
    if (!n.empty()) {
        switch (n.back()) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        default: break;
        }
        if (shift) n.remove_suffix(1);
    }
    if (n.empty() || n.size() > 20) return std::nullopt;
    std::uint64_t v = 0;
    for (char ch : n) {
        if (ch < '0' || ch > '9') return std::nullopt;
        if (v > (std::numeric_limits<std::uint64_t>::max() - 9) / 10) return std::nullopt;
        v = v * 10 + static_cast<unsigned>(ch - '0');
    }
    if (shift && v > (std::numeric_limits<std::uint64_t>::max() >> shift)) return std::nullopt;
    v <<= shift;
    if (v == 0) return std::nullopt;
    return v;
}

}  // namespace pagerd::daemon::store
