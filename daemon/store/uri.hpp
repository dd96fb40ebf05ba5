// Store URIs: which ones the operator allows (--allow-store) and the zero store's size.
// Pure functions of their text, so that they can be tested and fuzzed alone.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pagerd::daemon::store {

struct UriParts {
    std::string scheme, authority, path, query;
    std::string export_path;  // path with its %XX escapes decoded (what the server is asked for)
};
// "scheme://authority/path?query". Null when the text is not of that form (the scheme:
// letters, digits, '+', '-', '.'; a path escape: %XX of a byte that is not a control
// character or a space), has a fragment ('#'), a control character, a space or a
// backslash.
std::optional<UriParts> split_uri(std::string_view uri);

// True when `uri` names an NBD export (nbd, nbds, nbd+unix, nbds+unix) that `prefix`
// allows: same scheme, authority and query (so that no host, port, socket or TLS setting
// can be added or changed), and the prefix's export path (decoded) a prefix of the URI's.
bool allowed_by(std::string_view uri, std::string_view prefix);
bool allowed(std::string_view uri, const std::vector<std::string>& prefixes);
bool is_nbd_scheme(std::string_view scheme);
// One text per export however its path is spelt (%64isk and disk are one export): the
// key under which the daemon keeps one store, and one cache, per export. "" if invalid.
std::string canonical_uri(std::string_view uri);

// "zero:SIZE" (bytes, or with a K, M, G or T suffix: powers of 1024): the size, or null.
std::optional<std::uint64_t> zero_size(std::string_view uri);

}  // namespace pagerd::daemon::store
