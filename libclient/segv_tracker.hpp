// The in-process write tracker of Shared regions with Tracking::Sigsegv: the region is
// mapped PROT_READ; the first write to a page raises SIGSEGV (SEGV_ACCERR); the handler
// marks the page dirty, makes it writable and returns. Every other fault goes to the
// handler installed before ours, or kills the process exactly as it would have without us.
#pragma once
#include <cstdint>

#include "pagerd/util/result.hpp"

namespace pagerd::libclient::segv {

// Installs the handler (once) and tracks [start, start+length) with the dirty bitmap at
// `bitmap` (DirtyBitmap layout, `length / page` pages). Returns a slot for remove().
Result<int> add(std::uintptr_t start, std::uint64_t length, void* bitmap);
// Stops tracking; returns once no handler is still using the slot.
void remove(int slot);
// In a child made by fork(): the slot's region is not there (MADV_DONTFORK).
void forget_in_child(int slot);

// Counters for tests and status: writes taken, and how often protection had to be
// widened because the kernel refused to split the mapping further (vm.max_map_count).
std::uint64_t handled();
std::uint64_t widened();

}  // namespace pagerd::libclient::segv
