// Fork handlers of the library (fork.cpp).
#pragma once

namespace pagerd::libclient {

// Registers the library's fork handlers, once. A layer above that holds a lock of its own
// while it connects (the UMap API, the preload library) registers its handlers after these:
// prepare handlers run in the reverse order of registration, so at a fork its lock is
// taken before the library's, in the order its own calls take them.
void register_fork_handlers();

}  // namespace pagerd::libclient
