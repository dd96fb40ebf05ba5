// libFuzzer target: the store URIs a client names in MAP_STORE, against the operator's
// --allow-store prefixes (daemon/store/uri.cpp). The input is "URI\0PREFIX" (no NUL: the
// URI is its own prefix). What must hold: a URI is allowed only if it is an NBD URI with
// the prefix's scheme, authority and query exactly and no forbidden character; a prefix
// always allows itself when it is a valid NBD URI; zero:SIZE sizes are positive and equal
// the digits times the suffix.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "check.hpp"
#include "store/uri.hpp"

using namespace pagerd::daemon::store;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string in(reinterpret_cast<const char*>(data), size);
    const auto nul = in.find('\0');
    const std::string uri = in.substr(0, nul);
    const std::string prefix = nul == std::string::npos ? uri : in.substr(nul + 1);

    const auto u = split_uri(uri);
    const auto p = split_uri(prefix);
    if (u) {
        FUZZ_CHECK(uri.find('#') == std::string::npos && uri.find(' ') == std::string::npos);
        FUZZ_CHECK(u->scheme + "://" + u->authority + u->path + (uri.find('?') != std::string::npos ? "?" + u->query : "") ==
                   uri);
        FUZZ_CHECK(u->authority.find('/') == std::string::npos && u->authority.find('?') == std::string::npos);
    }
    const bool ok = allowed_by(uri, prefix);
    if (ok) {
        FUZZ_CHECK(u && p && is_nbd_scheme(u->scheme));
        FUZZ_CHECK(u->scheme == p->scheme && u->authority == p->authority && u->query == p->query);
        FUZZ_CHECK(u->export_path.substr(0, p->export_path.size()) == p->export_path);
        FUZZ_CHECK(!canonical_uri(uri).empty());
    }
    if (u && is_nbd_scheme(u->scheme)) FUZZ_CHECK(allowed_by(uri, uri));
    FUZZ_CHECK(allowed(uri, {prefix}) == ok);

    if (const auto z = zero_size(uri)) {
        FUZZ_CHECK(*z > 0);
        FUZZ_CHECK(uri.rfind("zero:", 0) == 0);
        std::string digits = uri.substr(5);
        unsigned shift = 0;
        switch (digits.empty() ? '\0' : digits.back()) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        default: break;
        }
        if (shift) digits.pop_back();
        FUZZ_CHECK(!digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos);
        FUZZ_CHECK(std::to_string(*z >> shift) == std::to_string(std::stoull(digits)));
    }
    return 0;
}
