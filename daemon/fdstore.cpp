#include "fdstore.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <sstream>

#include "cache.hpp"
#include "pagerd/util/uffd.hpp"
#include "store/file_store.hpp"
#include "worker.hpp"

namespace pagerd::daemon::fdstore {
namespace {

bool g_enabled = false;
std::mutex g_caches_mutex;  // workers store and forget caches; names of the caches stored
std::set<std::string> g_caches;

std::string prefix(std::uint64_t serial) { return "c" + std::to_string(serial) + "."; }

void store(Client& c, const std::string& name, int fd)
{
    if (fd < 0 || c.stored.count(name)) return;
    const std::string msg = "FDSTORE=1\nFDNAME=" + name;
    if (sd_pid_notify_with_fds(0, 0, msg.c_str(), &fd, 1) <= 0)
        spdlog::warn("client {}: cannot keep {} in the descriptor store", c.serial, name);
    else
        c.stored.insert(name);
}

void remove(const std::string& name)
{
    const std::string msg = "FDSTOREREMOVE=1\nFDNAME=" + name;
    sd_notify(0, msg.c_str());
}

// systemd keeps one copy of an open file however many names offer it, and a forked
// child's region file is its parent's open file: offered as it is, it would be dropped as
// a duplicate, and gone with the parent's entry. So it goes into a capsule, an open file
// of its own: a datagram socket with the descriptor in flight in it. peek() takes a copy
// out and leaves it there for the restart after.
util::UniqueFd encapsulate(int fd)
{
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) return {};
    util::UniqueFd sender(sv[0]), capsule(sv[1]);
    char byte = 'f';
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    cmsghdr* cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    if (::sendmsg(sender.get(), &mh, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) return {};
    return capsule;
}

util::UniqueFd peek(const util::UniqueFd& capsule)
{
    if (!capsule) return {};
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    if (::recvmsg(capsule.get(), &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1) return {};
    util::UniqueFd got;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < n; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (!got) got.reset(fd); else ::close(fd);
        }
    }
    return got;
}

std::string hex(const std::string& s)
{
    static const char* d = "0123456789abcdef";
    std::string out;
    for (unsigned char ch : s) {
        out += d[ch >> 4];
        out += d[ch & 15];
    }
    return out.empty() ? "-" : out;
}

// Reads what hex() wrote; false for anything else (std::stoi threw on a non-hex digit, which
// ended the daemon at start, and took "-1" or " f" for bytes).
bool unhex(const std::string& s, std::string& out)
{
    out.clear();
    if (s == "-") return true;
    auto digit = [](char ch) { return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1; };
    if (s.size() % 2) return false;
    for (std::size_t i = 0; i < s.size(); i += 2) {
        const int hi = digit(s[i]), lo = digit(s[i + 1]);
        if (hi < 0 || lo < 0) return false;
        out += static_cast<char>(hi << 4 | lo);
    }
    return true;
}

// Regions of stores the daemon reaches itself (NBD, zero) are not kept: a restarted daemon
// would have to connect again before it could serve them. Their pages mapped already stay
// readable; the others raise SIGBUS after the restart (PROTOCOL.md, MAP_STORE).
bool kept(const Region& r) { return !r.store || r.store->descriptor() >= 0; }

std::string describe(const Client& c)
{
    std::ostringstream o;
    o << "pagerd-client-state 1\n";
    o << "client " << c.serial << ' ' << c.peer.pid << ' ' << c.peer.uid << ' ' << c.peer.gid << ' ' << hex(c.name)
      << ' ' << c.hello_done << ' ' << c.uffd_flags << ' ' << c.uffds[0].features << ' ' << c.uffds[1].features
      << ' ' << c.next_region_id << '\n';
    if (c.forked_from) o << "forked " << c.forked_from << '\n';
    // A forked child's ranges that a next daemon cannot serve: its faults there get SIGBUS,
    // and its pages there not mapped yet are poisoned when the daemon lets go of it.
    for (const auto& [start, length] : c.lost) o << "lost " << start << ' ' << length << '\n';
    c.regions.for_each([&](const Region& r) {
        if (!kept(r)) {
            if (c.forked_from) o << "lost " << r.start << ' ' << r.length << '\n';
            return;
        }
        o << "region " << r.id << ' ' << r.start << ' ' << r.length << ' ' << r.file_offset << ' '
          << static_cast<unsigned>(r.access) << ' ' << static_cast<unsigned>(r.tracking) << ' ' << r.uffd_slot << ' '
          << r.mem_offset << ' ' << (r.mem ? r.mem->file_base : 0) << ' ' << (r.mem ? r.mem->length : 0) << ' '
          << (r.mem ? r.mem->mapped : 0) << ' ' << static_cast<unsigned>(r.state->prefetch) << ' '
          << (r.cache ? 1 : 0) << '\n';
    });
    o << "end\n";  // what follows is left from a longer text written before
    return o.str();
}

}  // namespace

std::optional<StoredClient> parse_state(const std::string& text)
{
    StoredClient s;
    std::istringstream in(text);
    std::string word, name_hex;
    in >> word >> word;  // header
    in >> word >> s.serial >> s.pid >> s.uid >> s.gid >> name_hex >> s.hello_done >> s.uffd_flags >> s.features[0] >>
        s.features[1] >> s.next_region_id;
    if (!in || word != "client" || !unhex(name_hex, s.name)) return std::nullopt;
    while (in >> word) {
        if (word == "forked" && s.regions.empty() && s.lost.empty() && !s.forked_from) {
            if (!(in >> s.forked_from) || s.forked_from == 0 || s.forked_from >= s.serial) return std::nullopt;
            continue;
        }
        if (word == "lost" && s.forked_from) {
            std::uint64_t start = 0, length = 0;
            if (!(in >> start >> length)) return std::nullopt;
            s.lost.emplace_back(start, length);
            continue;
        }
        if (word != "region") break;
        StoredRegion& r = s.regions.emplace_back();
        in >> r.id >> r.start >> r.length >> r.file_offset >> r.access >> r.tracking >> r.uffd_slot >> r.mem_offset >>
            r.file_base >> r.mem_length >> r.mapped;
        // A cut line is no region, and values save() never writes would index past arrays.
        if (!in || r.access > 2 || r.tracking > 3 || r.uffd_slot > 1) return std::nullopt;
        std::string rest;  // the prefetch policy, absent in the state of older daemons
        std::getline(in, rest);
        std::istringstream(rest) >> r.prefetch >> r.cached;
        // A cached region is read-only or private-writable (untracked), or Shared tracked by
        // the daemon with uffd-wp.
        if (r.cached > 1 || (r.cached && (r.access == 2 ? r.tracking != 1 : r.tracking != 0))) return std::nullopt;
    }
    return s;
}

bool enabled() { return g_enabled; }
void set_enabled(bool on)
{
    const char* sock = std::getenv("NOTIFY_SOCKET");
    g_enabled = on && sock && *sock;
}

void save(Client& c)
{
    if (!g_enabled || c.closing) return;
    const std::string p = prefix(c.serial);
    if (!c.state) c.state.reset(::memfd_create("pagerd-client-state", MFD_CLOEXEC));
    // Written over the old text, then cut to length: a daemon killed in between leaves the
    // new text, its "end" line, and a tail that is never read (truncated first, it would
    // leave an empty state, and the client would not be taken back).
    const std::string text = describe(c);
    if (text != c.state_text) {
        if (::pwrite(c.state.get(), text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()) ||
            ::ftruncate(c.state.get(), static_cast<off_t>(text.size())) != 0) {
            spdlog::warn("client {}: cannot write its state for a restart", c.serial);
            if (c.state_text.empty()) return;  // nothing stored without a state to read it by
        } else {
            c.state_text = text;
        }
    }
    store(c, p + "state", c.state.get());
    store(c, p + "sock", c.sock.get());
    store(c, p + "uffd0", c.uffds[0].fd.get());
    store(c, p + "uffd1", c.uffds[1].fd.get());
    c.regions.for_each([&](const Region& r) {
        if (!kept(r)) return;
        const std::string rp = p + "r" + std::to_string(r.id) + ".";
        if (c.forked_from && r.store && !c.stored.count(rp + "filebox")) {
            util::UniqueFd capsule = encapsulate(r.store->descriptor());
            if (!capsule)
                spdlog::warn("client {}: cannot put the file of region {} in a capsule: {}", c.serial, r.id,
                             std::strerror(errno));
            store(c, rp + "filebox", capsule.get());  // systemd keeps its own copy
        } else if (!c.forked_from) {
            store(c, rp + "file", r.store ? r.store->descriptor() : -1);
        }
        store(c, rp + "mem", r.mem ? r.mem->memfd.get() : -1);
        if (r.cache) store_cache(*r.cache);
    });
}

std::string cache_name(std::uint64_t dev, std::uint64_t ino)
{
    return "cache." + std::to_string(dev) + "." + std::to_string(ino);
}

std::string cache_bits_name(std::uint64_t dev, std::uint64_t ino)
{
    return "cachebits." + std::to_string(dev) + "." + std::to_string(ino);
}

std::string cache_file_name(std::uint64_t dev, std::uint64_t ino)
{
    return "cachefile." + std::to_string(dev) + "." + std::to_string(ino);
}

void store_cache(const Cache& cache)
{
    if (!g_enabled) return;
    // The cache, and once Shared regions write to it, its dirty set and the daemon's own
    // descriptor of the file for write-back.
    const std::pair<std::string, int> entries[] = {{cache_name(cache.dev(), cache.ino()), cache.memfd()},
                                                   {cache_bits_name(cache.dev(), cache.ino()), cache.bits_fd()},
                                                   {cache_file_name(cache.dev(), cache.ino()), cache.write_store_fd()}};
    std::lock_guard lock(g_caches_mutex);
    for (auto [name, fd] : entries) {
        if (fd < 0 || g_caches.count(name)) continue;
        const std::string msg = "FDSTORE=1\nFDNAME=" + name;
        if (sd_pid_notify_with_fds(0, 0, msg.c_str(), &fd, 1) <= 0)
            spdlog::warn("cannot keep {} of file {}:{} in the descriptor store", name, cache.dev(), cache.ino());
        else
            g_caches.insert(name);
    }
}

void forget_cache(const Cache& cache)
{
    if (!g_enabled) return;
    std::lock_guard lock(g_caches_mutex);
    for (const std::string& name : {cache_name(cache.dev(), cache.ino()), cache_bits_name(cache.dev(), cache.ino()),
                                     cache_file_name(cache.dev(), cache.ino())})
        if (g_caches.erase(name)) remove(name);
}

void forget(const Client& c)
{
    if (!g_enabled) return;
    for (const std::string& name : c.stored) remove(name);
}

void forget_region(Client& c, std::uint64_t region_id)
{
    if (!g_enabled) return;
    const std::string rp = prefix(c.serial) + "r" + std::to_string(region_id) + ".";
    for (auto it = c.stored.begin(); it != c.stored.end();) {
        if (it->rfind(rp, 0) == 0) {
            remove(*it);
            it = c.stored.erase(it);
        } else {
            ++it;
        }
    }
}

std::vector<std::unique_ptr<Client>> restore(Passed& passed, std::uint32_t page, CachePool& cache)
{
    std::vector<std::unique_ptr<Client>> out;
    auto take = [&](const std::string& name) {
        auto it = passed.find(name);
        if (it == passed.end()) return util::UniqueFd{};
        util::UniqueFd fd = std::move(it->second);
        passed.erase(it);
        return fd;
    };
    // Every client's descriptors by name ("c12.uffd0"): those no client taken back below
    // keeps leave the store at the end.
    std::vector<std::string> client_names;
    for (const auto& [name, fd] : passed)
        if (name.size() > 2 && name[0] == 'c' && std::isdigit(static_cast<unsigned char>(name[1]))) client_names.push_back(name);
    struct Found {
        std::string name;
        util::UniqueFd fd;
        StoredClient parsed;
    };
    std::vector<Found> states;
    std::vector<std::string> names;
    for (const auto& [name, fd] : passed)
        if (name.size() > 6 && name.compare(name.size() - 6, 6, ".state") == 0) names.push_back(name);
    for (const std::string& state_name : names) {
        util::UniqueFd fd = take(state_name);
        struct stat st{};
        ::fstat(fd.get(), &st);
        std::string text(static_cast<std::size_t>(st.st_size), '\0');
        if (::pread(fd.get(), text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) continue;
        auto parsed = parse_state(text);
        if (!parsed) {
            spdlog::warn("descriptor store: unreadable state {}; dropping that client", state_name);
            continue;
        }
        states.push_back({state_name, std::move(fd), std::move(*parsed)});
    }
    std::set<std::string> cache_names_taken;  // those the pool did not adopt leave the store
    // A region's file: a forked child's in its capsule (encapsulate()), anyone else's as is.
    auto file_of = [&](const std::string& rp, bool forked, std::string& why) -> std::shared_ptr<store::Store> {
        util::UniqueFd fd = forked ? peek(take(rp + "filebox")) : take(rp + "file");
        if (!fd) {
            why = "no descriptor of its file in the store";
            return nullptr;
        }
        return store::FileStore::open(std::move(fd), why);
    };
    for (Found& found : states) {
        const std::string& state_name = found.name;
        const StoredClient* parsed = &found.parsed;
        const std::string p = state_name.substr(0, state_name.size() - 5);  // "c12."
        auto c = std::make_unique<Client>();
        c->state = std::move(found.fd);
        c->serial = parsed->serial;
        c->peer.pid = parsed->pid;
        c->peer.uid = parsed->uid;
        c->peer.gid = parsed->gid;
        c->name = parsed->name;
        c->hello_done = parsed->hello_done;
        c->uffd_flags = parsed->uffd_flags;
        c->uffds[0].features = parsed->features[0];
        c->uffds[1].features = parsed->features[1];
        c->next_region_id = parsed->next_region_id;
        c->forked_from = parsed->forked_from;
        c->sock = take(p + "sock");
        c->uffds[0].fd = take(p + "uffd0");
        c->uffds[1].fd = take(p + "uffd1");
        std::map<std::uint64_t, std::shared_ptr<store::Store>> files;
        std::map<std::uint64_t, std::shared_ptr<SharedMemory>> mems;
        std::map<std::uint64_t, std::shared_ptr<Cache>> caches;
        std::map<std::uint64_t, std::shared_ptr<RegionState>> region_states;
        bool ok = (c->sock || c->forked_from) && c->uffds[0].fd;
        std::vector<const StoredRegion*> lost;  // a forked child's regions that cannot be kept
        for (const StoredRegion& sr : parsed->regions) {
            if (!ok) break;
            Region r;
            r.id = sr.id;
            r.start = sr.start;
            r.length = sr.length;
            r.file_offset = sr.file_offset;
            r.uffd_slot = sr.uffd_slot;
            r.mem_offset = sr.mem_offset;
            const unsigned access = sr.access, tracking = sr.tracking, prefetch = sr.prefetch;
            const std::uint64_t file_base = sr.file_base, mem_length = sr.mem_length;
            if (!region_states.count(r.id)) {
                region_states[r.id] = std::make_shared<RegionState>();
                region_states[r.id]->prefetch = prefetch <= 2 ? static_cast<proto::Prefetch>(prefetch) : proto::Prefetch::SEQUENTIAL;
            }
            r.state = region_states[r.id];
            r.access = static_cast<proto::Access>(access);
            r.tracking = static_cast<proto::Tracking>(tracking);
            const std::string rp = p + "r" + std::to_string(r.id) + ".";
            if (!files.count(r.id)) {
                std::string why;
                files[r.id] = file_of(rp, c->forked_from != 0, why);
                if (!files[r.id]) spdlog::warn("descriptor store: client {} region {}: {}", c->serial, r.id, why);
            }
            r.store = files[r.id];
            if (!r.store && c->forked_from) {
                lost.push_back(&sr);
                continue;
            }
            if (!r.store) {
                ok = false;
                break;
            }
            if (r.shared() && !sr.cached && !mems.count(r.id)) {
                util::UniqueFd memfd = take(rp + "mem");
                proto::ErrorCode code{};
                std::string why = "no memfd";
                const char* bad = memfd ? SharedMemory::unusable(memfd.get()) : "";
                auto mem = bad ? nullptr : SharedMemory::map(std::move(memfd), mem_length, page, code, why);
                if (!mem) {
                    spdlog::warn("descriptor store: client {} region {}: {}", c->serial, r.id, bad && *bad ? bad : why);
                    ok = false;
                    break;
                }
                mem->store = r.store;
                mem->file_base = file_base;
                mems[r.id] = mem;
            }
            if (r.shared() && !sr.cached) r.mem = mems[r.id];
            if (sr.cached && !caches.count(r.id)) {
                // One entry per file (systemd keeps one copy of a descriptor stored twice):
                // the first region of the file takes it, the others find the cache.
                std::string why = "no cache memfd in the store";
                std::shared_ptr<Cache> got = cache.find(*r.store);
                if (!got) {
                    const auto id = r.store->identity();
                    const std::string name = cache_name(id.a, id.b);
                    const std::string bits_name = cache_bits_name(id.a, id.b);
                    util::UniqueFd memfd = take(name);
                    const std::string file_name = cache_file_name(id.a, id.b);
                    cache_names_taken.insert({name, bits_name, file_name});
                    util::UniqueFd bits = take(bits_name);
                    const bool had_bits = static_cast<bool>(bits);
                    std::string no_file;
                    std::shared_ptr<store::Store> write_store = store::FileStore::open(take(file_name), no_file);
                    const bool had_file = write_store != nullptr;
                    if (write_store && write_store->identity() != id) write_store.reset();  // never another file
                    if (memfd) got = cache.adopt(std::move(memfd), std::move(bits), std::move(write_store), *r.store, why);
                    if (got) {
                        std::lock_guard lock(g_caches_mutex);
                        g_caches.insert(name);
                        if (had_bits) g_caches.insert(bits_name);
                        if (had_file && got->write_store_fd() >= 0) g_caches.insert(file_name);
                    }
                }
                if (!got) {
                    spdlog::warn("descriptor store: client {} region {}: {}", c->serial, r.id, why);
                    if (c->forked_from) {
                        lost.push_back(&sr);
                        continue;
                    }
                    ok = false;
                    break;
                }
                caches[r.id] = got;
            }
            if (sr.cached) r.cache = caches[r.id];
            if (sr.cached && r.shared()) {
                if (r.cache->bits_fd() < 0)
                    spdlog::warn("descriptor store: client {} region {}: the dirty set of its file's cache is "
                                 "missing: writes not yet written back before the restart are lost", c->serial, r.id);
                std::string why;
                if (!r.cache->make_writable(r.store, why)) {
                    spdlog::warn("descriptor store: client {} region {}: {}", c->serial, r.id, why);
                    if (c->forked_from) {
                        lost.push_back(&sr);
                        continue;
                    }
                    ok = false;
                    break;
                }
            }
            c->regions.insert(std::move(r));
        }
        // A forked child keeps the regions that could be kept; in the others (all of them if
        // it is dropped), pages it has not mapped raise SIGBUS: its userfaultfd would not
        // serve them, and closed, it would leave them reading what the memory behind holds.
        if (!ok) {
            spdlog::warn("descriptor store: client {} is incomplete; dropping it", c->serial);
            continue;
        }
        // A forked child keeps the regions that could be kept. The others are its lost
        // ranges: a fault there gets SIGBUS (no region), and poison_unloaded() marks their
        // pages not mapped yet when the daemon lets go of it (closed, its userfaultfd would
        // leave them reading what the memory behind them holds).
        c->lost = parsed->lost;
        for (const StoredRegion* sr : lost) {
            spdlog::warn("descriptor store: forked client {}: region {} is not kept; its pages not mapped yet "
                         "raise SIGBUS", c->serial, sr->id);
            c->lost.emplace_back(sr->start, sr->length);
        }
        for (const auto& [n, fd] : passed)
            if (n.rfind(p, 0) == 0) c->stored.insert(n);
        c->stored.insert(state_name);
        if (c->sock) c->stored.insert(p + "sock");
        c->stored.insert(p + "uffd0");
        if (c->uffds[1].fd) c->stored.insert(p + "uffd1");
        c->regions.for_each([&](const Region& r) {
            c->stored.insert(p + "r" + std::to_string(r.id) + (c->forked_from ? ".filebox" : ".file"));
            if (r.mem) c->stored.insert(p + "r" + std::to_string(r.id) + ".mem");
        });
        spdlog::info("client {} (pid {}{}) taken back from the descriptor store with {} region(s)", c->serial,
                     c->peer.pid, c->forked_from ? ", forked from client " + std::to_string(c->forked_from) : "",
                     c->regions.count());
        out.push_back(std::move(c));
    }
    // What belongs to no client taken back leaves the store: kept there, a dropped client's
    // socket or userfaultfd would keep it waiting on a daemon that never answers, and a
    // cache no region maps would stay for ever (nothing takes a cache back later).
    std::set<std::string> kept_names;
    for (const auto& c : out) kept_names.insert(c->stored.begin(), c->stored.end());
    for (const std::string& name : client_names)
        if (!kept_names.count(name)) remove(name);
    for (const auto& [name, fd] : passed)
        if (!kept_names.count(name) && !std::count(client_names.begin(), client_names.end(), name)) remove(name);
    std::lock_guard lock(g_caches_mutex);
    for (const std::string& name : cache_names_taken)
        if (!g_caches.count(name)) remove(name);
    return out;
}

}  // namespace pagerd::daemon::fdstore
