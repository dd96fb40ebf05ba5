// libFuzzer target: fdstore::parse_state, which reads the description of a client that an
// earlier daemon left in systemd's descriptor store (a memfd it wrote with fdstore::save).
// A restarted daemon parses it before it serves anyone, so whatever the text holds (a
// state cut short, written by another version, damaged) must give a client or a refusal:
// never an exception, which would end the daemon at every restart.
#include <cstddef>
#include <cstdint>
#include <string>

#include "check.hpp"
#include "fdstore.hpp"

using namespace pagerd::daemon;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    const auto state = fdstore::parse_state(text);
    if (!state) return 0;
    // What restore() takes from it as is: the name (hex, two digits a byte) and, per region,
    // values it casts to proto::Access / proto::Tracking and uses as an index into uffds[2].
    FUZZ_CHECK(state->name.size() * 2 <= size);
    // A forked child names a parent, which came before it (restore() follows the chain).
    if (state->forked_from) FUZZ_CHECK(state->forked_from < state->serial);
    if (!state->lost.empty()) FUZZ_CHECK(state->forked_from != 0);  // only a child has lost regions
    for (const auto& r : state->regions) {
        FUZZ_CHECK(r.access <= 2);
        FUZZ_CHECK(r.tracking <= 3);
        FUZZ_CHECK(r.uffd_slot <= 1);
        // A region in the page cache has no memfd of its own: restore() gives a Shared one
        // the cache, never a memfd, so only uffd-wp tracking (the daemon's) may come with it.
        FUZZ_CHECK(r.cached <= 1);
        if (r.cached) FUZZ_CHECK(r.access == 2 ? r.tracking == 1 : r.tracking == 0);
    }
    return 0;
}
