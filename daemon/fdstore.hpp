// Keeping clients across a restart of the daemon: every client's connection, userfaultfds,
// files and memfds go into systemd's file-descriptor store (FDSTORE=1 with FDNAME=), with
// a small memfd per client that describes its regions. A new daemon gets them back through
// LISTEN_FDS / LISTEN_FDNAMES and serves on; clients never notice more than a pause.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pagerd/util/unique_fd.hpp"

namespace pagerd::daemon {

struct Client;

namespace fdstore {

// True when a service manager listens (NOTIFY_SOCKET) and --fd-store is on.
bool enabled();
void set_enabled(bool on);

// Stores what of c is not stored yet and rewrites c's state memfd.
void save(Client& c);
// Removes every descriptor of c from the store (the client is gone for good).
void forget(const Client& c);
// Removes the descriptors of one region of c.
void forget_region(Client& c, std::uint64_t region_id);

// Descriptors passed back at start, by name.
using Passed = std::map<std::string, util::UniqueFd>;
// Rebuilds the clients stored by an earlier daemon; what cannot be used is closed and
// logged. `page` is the page size; the clients come with regions, uffds and socket.
std::vector<std::unique_ptr<Client>> restore(Passed& passed, std::uint32_t page);

}  // namespace fdstore
}  // namespace pagerd::daemon
