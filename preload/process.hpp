// The process's side of the library: the one mutex of the slow paths (and what fork()
// does with it), the settings, and the connection to pagerd (made at the first mapping
// that needs it, once per process; a forked child makes its own).
#pragma once
#include <cstddef>
#include <cstdint>

#include "config.hpp"
#include "pagerd/client.hpp"

namespace pagerd::preload {

inline constexpr std::uintptr_t k_page = 4096;
constexpr std::uintptr_t round_up(std::uintptr_t n) { return (n + k_page - 1) & ~(k_page - 1); }
inline std::uintptr_t as_int(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
inline void* as_ptr(std::uintptr_t a) { return reinterpret_cast<void*>(a); }

// Holds the slow paths' mutex.
struct Lock {
    Lock() noexcept;
    ~Lock();
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;
};

// The settings, read the first time (takes the mutex then: call without it held).
const Config& config() noexcept;

// With the mutex held: the connection for a new mapping in this process, or nullptr and
// why (connecting failed, now or before; a request timed out; the daemon went away).
libclient::Connection* connection(char* why, std::size_t n) noexcept;
// In a child of fork(), for the parent's regions: connection(), or nullptr at once if the
// parent's connection had timed out or been lost.
libclient::Connection* child_connection(char* why, std::size_t n) noexcept;
// After a failed request: a timeout or a lost connection stops new mappings through it.
void note_failure(libclient::Connection* conn, const Error& e) noexcept;

}  // namespace pagerd::preload
