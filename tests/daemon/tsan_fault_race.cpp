// The ThreadSanitizer pass's proof that it can fail: a data race between the daemon's own
// fault path and a second thread, which the TSan build must report.
//
// Why it exists: the TSan pass of scripts/test.sh finds no race in the daemon, and a pass
// that finds nothing is only worth something if it would have found one. So this program
// makes one, in daemon code, the kind a change could bring in: a thread other than the
// client's worker reading a region's read-ahead state (RegionState::streams and
// stream_clock, "touched by the client's worker only", region_table.hpp), say to show the
// streams in a status reply, while the worker's fault path writes it without a lock
// (Worker::readahead, daemon/readahead.cpp).
//
// Everything here is the daemon's: pagerd_core's Worker with its io_uring loop and fault
// path, and a client handed to it with Worker::adopt() as a restarted daemon adopts one
// from the descriptor store (a connection, a userfaultfd, one read-only region of a
// file); its RegionState is the one the worker updates on every fault. This process
// faults on the region's pages; the worker serves them.
//
// tests/daemon/CMakeLists.txt registers it with CTest in the TSan build only, passing
// only when the output holds ThreadSanitizer's data race report with a frame in
// daemon/readahead.cpp. If it ever prints "no data race reported", ThreadSanitizer did not
// see this race, and the TSan pass proves nothing: that is a failure.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "config.hpp"
#include "pagerd/util/uffd.hpp"
#include "region_table.hpp"
#include "store/file_store.hpp"
#include "worker.hpp"

using namespace pagerd;
using namespace pagerd::daemon;

namespace {

#define REQUIRE_OR_EXIT(cond)                                                          \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::perror("tsan_fault_race: " #cond);                                    \
            std::exit(2);                                                              \
        }                                                                              \
    } while (0)

constexpr std::uint64_t k_pages = 1024;

std::uint8_t byte_at(std::uint64_t i) { return static_cast<std::uint8_t>(i * 131 + i / 4096); }

}  // namespace

int main()
{
    spdlog::set_level(spdlog::level::warn);
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t length = k_pages * page;

    // The store: a file of known bytes, already unlinked.
    char path[] = "/tmp/pagerd-tsan-race-XXXXXX";
    const int file = ::mkstemp(path);
    REQUIRE_OR_EXIT(file >= 0);
    ::unlink(path);
    std::vector<std::uint8_t> bytes(length);
    for (std::uint64_t i = 0; i < length; ++i) bytes[i] = byte_at(i);
    REQUIRE_OR_EXIT(::pwrite(file, bytes.data(), length, 0) == static_cast<ssize_t>(length));

    // A worker as the daemon runs it.
    Config config;
    config.fault_block_bytes = page;  // one page per fault: many faults, each through readahead()
    config.staging_buffers = 8;
    Context ctx{config};
    ctx.page_size = static_cast<std::uint32_t>(page);
    Worker worker(ctx, 0);
    ctx.stats.push_back(&worker.stats());
    ctx.workers.push_back(&worker);
    worker.start();

    // A client as the library prepares one: its userfaultfd, memory registered with it,
    // the connection; and as MAP makes it: one read-only region with sequential read-ahead.
    util::UniqueFd uffd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    REQUIRE_OR_EXIT(uffd);
    uffdio_api api{UFFD_API, UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON, 0};
    REQUIRE_OR_EXIT(::ioctl(uffd.get(), UFFDIO_API, &api) == 0);
    void* mem = ::mmap(nullptr, length, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE_OR_EXIT(mem != MAP_FAILED);
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(mem);
    reg.range.len = length;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    REQUIRE_OR_EXIT(::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) == 0);
    int sv[2];
    REQUIRE_OR_EXIT(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    util::UniqueFd our_end(sv[1]);

    auto client = std::make_unique<Client>();
    client->serial = ctx.next_client_serial.fetch_add(1);
    client->peer = {::getpid(), ::getuid(), ::getgid()};
    client->name = "tsan-race";
    client->hello_done = true;
    client->sock.reset(sv[0]);
    client->uffds[0].fd = std::move(uffd);
    client->uffds[0].features = api.features;
    Region region;
    region.id = client->next_region_id++;
    region.start = reinterpret_cast<std::uint64_t>(mem);
    region.length = length;
    region.access = proto::Access::READ_ONLY;
    std::string why;
    region.store = store::FileStore::open(util::UniqueFd(file), why);
    REQUIRE_OR_EXIT(region.store != nullptr);
    region.state->prefetch = proto::Prefetch::SEQUENTIAL;
    const std::shared_ptr<RegionState> state = region.state;
    client->regions.insert(std::move(region));
    ctx.connections.fetch_add(1);
    worker.adopt(std::move(client));

    // The second thread: reads the read-ahead state with no lock, as the worker's fault
    // path writes it. It reads once before any fault (so that the worker's first write is
    // the access ThreadSanitizer reports, with the worker's own stack), then goes on.
    // The flags are relaxed atomics: no happens-before for ThreadSanitizer to see.
    std::atomic<bool> started{false}, stop{false};
    std::uint64_t seen = 0;
    std::thread reader([&] {
        const auto* clock = static_cast<volatile const std::uint64_t*>(&state->stream_clock);
        seen += *clock;
        started.store(true, std::memory_order_relaxed);
        while (!stop.load(std::memory_order_relaxed)) {
            seen += *clock;
            for (const Stream& s : state->streams) seen += static_cast<volatile const std::uint64_t&>(s.next);
        }
    });
    while (!started.load(std::memory_order_relaxed)) std::this_thread::yield();

    // Faults from the last page down: none continues a stream, so each one goes through
    // readahead() and starts a stream there.
    const auto* p = static_cast<const volatile std::uint8_t*>(mem);
    std::uint64_t wrong = 0;
    for (std::uint64_t pg = k_pages; pg-- > 0;) wrong += p[pg * page + pg % page] != bytes[pg * page + pg % page];
    stop.store(true, std::memory_order_relaxed);
    reader.join();
    worker.stop();
    worker.join();
    if (wrong) {
        std::fprintf(stderr, "tsan_fault_race: %llu pages served wrong: the fault path did not run as expected\n",
                     static_cast<unsigned long long>(wrong));
        return 1;
    }
    std::printf("tsan_fault_race: no data race reported (%llu faults served, reader saw %llu)\n",
                static_cast<unsigned long long>(worker.stats().faults.load()), static_cast<unsigned long long>(seen));
    return 0;
}
