// A hostile local client against the daemon's page cache (daemon/cache.hpp): the cache
// descriptor it is given (read-only, mode 0400, sealed), pages it makes in the cache's
// holes through mappings it does not register with a userfaultfd, MAP requests the daemon
// must refuse, and a client killed with cache regions mapped. Through all of it the daemon
// stays up, every other client reads the file's own bytes, and a bystander reading another
// file is served to the end.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <grp.h>
#include <linux/falloc.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "harness.hpp"
#include "pagerd/proto/constants.hpp"
#include "raw_client.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace std::chrono_literals;
using libclient::Access;
using libclient::MapOptions;

namespace {

constexpr std::uint64_t k_page = 4096;
constexpr std::uint64_t k_mib = 1024 * 1024;
constexpr std::uint64_t k_cache_features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON | UFFD_FEATURE_MINOR_SHMEM;

std::uint64_t round_up(std::uint64_t v, std::uint64_t unit) { return (v + unit - 1) / unit * unit; }

// A raw client with a CACHE region of a whole file: it holds the cache's descriptor the
// daemon sent, and maps or registers nothing at the region's addresses.
struct CacheHolder {
    CacheHolder(const Daemon& daemon, const std::string& path, std::uint64_t file_size)
        : client(daemon.socket()), reserved(round_up(file_size, k_page))
    {
        client.hello();
        uffd = make_uffd_with(k_cache_features);
        client.send(proto::RegisterUffd{k_cache_features, 0}, {uffd.get()});
        client.expect<proto::Ok>();
        file.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        REQUIRE(file);
        client.send(proto::Map{reserved.start(), reserved.length, 0, proto::k_map_cache, proto::Prefetch::NONE},
                    {file.get()});
        auto got = client.receive_with_fds();
        REQUIRE(got.has_value());
        if (const auto* e = std::get_if<proto::ErrorReply>(&got->msg.body)) FAIL("MAP CACHE refused: " << e->text);
        REQUIRE(std::holds_alternative<proto::CacheMapped>(got->msg.body));
        REQUIRE(got->fds.size() == 1);
        cache = std::move(got->fds[0]);
    }
    RawClient client;
    Reservation reserved;
    util::UniqueFd uffd, file, cache;
};

// A libclient reader of another file, mapped with no read-ahead: the pages it reads at
// the end are served then, by the daemon that lived through the test.
struct Bystander {
    Bystander(const Daemon& daemon, const std::string& path) : conn(daemon.connect("bystander")), want(read_file(path))
    {
        MapOptions o;
        o.length = round_up(want.size(), k_page);
        o.prefetch = libclient::Prefetch::None;
        auto r = conn->map_file(path, o);
        REQUIRE(r.ok());
        region = r.value();
        const auto* p = static_cast<const std::uint8_t*>(region.addr);
        REQUIRE(std::memcmp(p, want.data(), 4 * k_page) == 0);
    }
    bool all_right() const { return std::memcmp(region.addr, want.data(), want.size()) == 0; }
    std::unique_ptr<libclient::Connection> conn;
    std::vector<std::uint8_t> want;
    libclient::Region region;
};

// The pages of [from, to) (page numbers) whose bytes at `got` differ from `want`.
struct Wrong {
    std::vector<std::uint64_t> pages;
    std::uint64_t zero_pages = 0;  // of them, pages that read as zeros
    std::string describe() const
    {
        std::ostringstream s;
        s << pages.size() << " wrong pages (" << zero_pages << " all zeros), first:";
        for (std::size_t i = 0; i < pages.size() && i < 8; ++i) s << ' ' << pages[i];
        return s.str();
    }
};
Wrong compare_pages(const std::uint8_t* got, const std::vector<std::uint8_t>& want, std::uint64_t from, std::uint64_t to)
{
    static const std::vector<std::uint8_t> zeros(k_page, 0);
    Wrong w;
    for (std::uint64_t p = from; p < to; ++p) {
        const std::uint64_t off = p * k_page, n = std::min<std::uint64_t>(k_page, want.size() - off);
        if (std::memcmp(got + off, want.data() + off, n) == 0) continue;
        w.pages.push_back(p);
        w.zero_pages += std::memcmp(got + off, zeros.data(), n) == 0;
    }
    return w;
}

// True when the memfd holds page `page` (SEEK_DATA stops there).
bool present(int memfd, std::uint64_t page)
{
    return ::lseek(memfd, static_cast<off_t>(page * k_page), SEEK_DATA) == static_cast<off_t>(page * k_page);
}

// The cache's bytes of `page`, read through the descriptor (a hole reads as zeros).
std::vector<std::uint8_t> cache_page(int memfd, std::uint64_t page)
{
    std::vector<std::uint8_t> b(k_page);
    REQUIRE(::pread(memfd, b.data(), k_page, static_cast<off_t>(page * k_page)) == static_cast<ssize_t>(k_page));
    return b;
}

bool equals_file(const std::vector<std::uint8_t>& bytes, const std::vector<std::uint8_t>& want, std::uint64_t page)
{
    return std::memcmp(bytes.data(), want.data() + page * k_page, k_page) == 0;
}

std::string describe_status(int status)
{
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "wait status " + std::to_string(status);
}

}  // namespace

TEST_CASE("a client's cache descriptor cannot write, grow, shrink or punch the cache", "[cache][hostile]")
{
    TempDir dir;
    const std::uint64_t size = 1 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 61);
    make_file(dir.file("other"), 256 * 1024, 62);
    const auto want = read_file(dir.file("data"));
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    {
        CacheHolder hostile(daemon, dir.file("data"), size);
        const int cfd = hostile.cache.get();
        CHECK((::fcntl(cfd, F_GETFL) & O_ACCMODE) == O_RDONLY);
        struct stat st{};
        REQUIRE(::fstat(cfd, &st) == 0);
        CHECK((st.st_mode & 07777) == 0400);
        const off_t cache_size = st.st_size;
        CHECK(cache_size >= static_cast<off_t>(size));
        const int seals = ::fcntl(cfd, F_GET_SEALS);
        CHECK((seals & (F_SEAL_SHRINK | F_SEAL_SEAL)) == (F_SEAL_SHRINK | F_SEAL_SEAL));

        // Another user's client holds this descriptor too (here: a child that drops to
        // nobody). It cannot reopen the cache for writing, neither through the daemon's
        // descriptor table nor through its own copy, nor make it writable. Forked before
        // this process runs any thread (harness.hpp).
        if (::geteuid() == 0) {
            const pid_t parent = ::getpid();
            const int status = run_child([&] {
                if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;
                // Dumpable, as any process that never changed its ids: its /proc/self/fd
                // is its own, so only the file's mode can refuse a reopen.
                if (::prctl(PR_SET_DUMPABLE, 1) != 0) return 11;
                // Control: a memfd of its own does reopen read-write that way.
                util::UniqueFd own(::memfd_create("own", MFD_CLOEXEC));
                if (!own) return 12;
                util::UniqueFd reopened(::open(("/proc/self/fd/" + std::to_string(own.get())).c_str(), O_RDWR | O_CLOEXEC));
                if (!reopened) return 13;
                int code = 20;
                for (const std::string& path : {"/proc/" + std::to_string(parent) + "/fd/" + std::to_string(cfd),
                                                "/proc/self/fd/" + std::to_string(cfd)}) {
                    for (const int mode : {O_RDWR, O_RDONLY, O_WRONLY}) {
                        errno = 0;
                        util::UniqueFd fd(::open(path.c_str(), mode | O_CLOEXEC));
                        if (fd) return code;                   // opened
                        if (errno != EACCES) return code + 1;  // refused for another reason
                        code += 2;
                    }
                }
                if (::fchmod(cfd, 0666) == 0) return 40;
                if (errno != EPERM) return 41;
                // Nor through a mapping of it (/proc/self/map_files).
                void* m = ::mmap(nullptr, k_page, PROT_READ, MAP_SHARED, cfd, 0);
                if (m == MAP_FAILED) return 42;
                char range[64];
                std::snprintf(range, sizeof range, "/proc/self/map_files/%lx-%lx", reinterpret_cast<unsigned long>(m),
                              reinterpret_cast<unsigned long>(m) + k_page);
                if (util::UniqueFd(::open(range, O_RDWR | O_CLOEXEC))) return 43;
                return 0;
            });
            INFO("child: " << describe_status(status)
                           << " (10-13: setup; 20-31: a reopen of the cache that did not fail with EACCES; "
                              "40-41: fchmod did not fail with EPERM, 42-43: a reopen through map_files)");
            CHECK(exited_with(status, 0));
        } else {
            WARN("not root: the reopen as another user is not tried");
        }

        Bystander bystander(daemon, dir.file("other"));
        // A reader loads the first half into the cache (no read-ahead: the second half
        // stays holes).
        auto reader = daemon.connect("reader");
        MapOptions ro;
        ro.length = size;
        ro.prefetch = libclient::Prefetch::None;
        auto r = reader->map_file(dir.file("data"), ro);
        REQUIRE(r.ok());
        const auto* rp = static_cast<const std::uint8_t*>(r->addr);
        {
            const Wrong w = compare_pages(rp, want, 0, pages / 2);
            INFO(w.describe());
            REQUIRE(w.pages.empty());
        }
        REQUIRE(present(cfd, 0));
        for (std::uint64_t p = pages / 2; p < pages; ++p) REQUIRE_FALSE(present(cfd, p));

        // Writing through a mapping: refused, and a read-only shared mapping cannot become
        // writable, punch, or be registered (UFFDIO_COPY would fill holes with our bytes).
        errno = 0;
        CHECK(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0) == MAP_FAILED);
        CHECK(errno == EACCES);
        void* shared = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, cfd, 0);
        REQUIRE(shared != MAP_FAILED);
        errno = 0;
        CHECK(::mprotect(shared, size, PROT_READ | PROT_WRITE) == -1);
        CHECK(errno == EACCES);
        errno = 0;
        CHECK(::madvise(shared, pages / 2 * k_page, MADV_REMOVE) == -1);
        CHECK(errno == EACCES);
        {
            auto u = make_uffd_with(k_cache_features);
            uffdio_register reg{{reinterpret_cast<std::uint64_t>(shared), size}, UFFDIO_REGISTER_MODE_MISSING, 0};
            errno = 0;
            CHECK(::ioctl(u.get(), UFFDIO_REGISTER, &reg) == -1);
            CHECK(errno == EPERM);
        }
        ::munmap(shared, size);

        // Growing, shrinking, punching, writing, sealing through the descriptor: refused.
        errno = 0;
        CHECK(::ftruncate(cfd, cache_size + static_cast<off_t>(k_mib)) == -1);
        CHECK(errno == EINVAL);
        CHECK(::ftruncate(cfd, cache_size - static_cast<off_t>(k_page)) == -1);
        CHECK(::ftruncate(cfd, 0) == -1);
        errno = 0;
        CHECK(::fallocate(cfd, 0, cache_size, static_cast<off_t>(k_mib)) == -1);
        CHECK(errno == EBADF);
        CHECK(::fallocate(cfd, 0, 0, static_cast<off_t>(size)) == -1);
        errno = 0;
        CHECK(::fallocate(cfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(size)) == -1);
        CHECK(errno == EBADF);
        const std::vector<std::uint8_t> junk(k_page, 0xEE);
        errno = 0;
        CHECK(::pwrite(cfd, junk.data(), k_page, 0) == -1);
        CHECK(errno == EBADF);
        CHECK(::write(cfd, junk.data(), k_page) == -1);
        for (const int seal : {F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SHRINK}) {
            errno = 0;
            CHECK(::fcntl(cfd, F_ADD_SEALS, seal) == -1);
            CHECK(errno == EPERM);
        }
        CHECK(::fcntl(cfd, F_GET_SEALS) == seals);
        REQUIRE(::fstat(cfd, &st) == 0);
        CHECK(st.st_size == cache_size);
        CHECK((st.st_mode & 07777) == 0400);
        // The loaded half is still there, still the file's bytes.
        for (std::uint64_t p = 0; p < pages / 2; ++p) {
            INFO("page " << p);
            REQUIRE(present(cfd, p));
            REQUIRE(equals_file(cache_page(cfd, p), want, p));
        }

        // A private writable mapping is allowed: the writes are the hostile client's own.
        // Every page is written, the loaded half and the holes (a write there makes a
        // page in the cache, then copies it).
        auto* priv = static_cast<std::uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, cfd, 0));
        REQUIRE(priv != MAP_FAILED);
        for (std::uint64_t p = 0; p < pages; ++p) std::memset(priv + p * k_page, 0xEE, k_page);
        CHECK(std::all_of(priv, priv + size, [](std::uint8_t b) { return b == 0xEE; }));
        for (std::uint64_t p = pages / 2; p < pages; ++p) {
            INFO("page " << p);
            REQUIRE(present(cfd, p));  // zero pages the kernel made in the cache, and copied
            REQUIRE_FALSE(equals_file(cache_page(cfd, p), want, p));
        }

        // The reader, and a reader that maps the file now, read the file's bytes.
        {
            const Wrong w = compare_pages(rp, want, 0, pages);
            INFO("first reader: " << w.describe());
            CHECK(w.pages.empty());
        }
        {
            auto late = daemon.connect("late reader");
            auto lr = late->map_file(dir.file("data"), {0, size, Access::ReadOnly});
            REQUIRE(lr.ok());
            const Wrong w = compare_pages(static_cast<const std::uint8_t*>(lr->addr), want, 0, pages);
            INFO("late reader: " << w.describe());
            CHECK(w.pages.empty());
        }
        for (std::uint64_t p = 0; p < pages; ++p) {
            INFO("page " << p);
            REQUIRE(equals_file(cache_page(cfd, p), want, p));
        }
        ::munmap(priv, size);

        CHECK(daemon.alive());
        CHECK(bystander.all_right());
        hostile.uffd.reset();
    }
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.cache_files == 0; }));
    CHECK(daemon.wait_fds_at_most(fds_at_start));
}

TEST_CASE("a page a client makes in a hole of the cache is never shown to another client", "[cache][hostile]")
{
    const std::string how = GENERATE(as<std::string>{}, "shared read", "private read", "private write");
    const bool victim_first = GENERATE(false, true);
    INFO(how << (victim_first ? ", the victim maps first" : ", the hostile client plants first"));
    TempDir dir;
    const std::uint64_t size = 8 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 71);
    make_file(dir.file("other"), 256 * 1024, 72);
    const auto want = read_file(dir.file("data"));
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    {
        Bystander bystander(daemon, dir.file("other"));
        auto victim = daemon.connect("victim");
        const std::uint8_t* vp = nullptr;
        auto map_victim = [&] {
            // PrivateWritable maps the cache too, and is what a victim that reads first uses.
            auto r = victim->map_file(dir.file("data"),
                                      {0, size, victim_first ? Access::PrivateWritable : Access::ReadOnly});
            REQUIRE(r.ok());
            vp = static_cast<const std::uint8_t*>(r->addr);
        };
        if (victim_first) {
            map_victim();
            const Wrong w = compare_pages(vp, want, 0, 2);  // the start, and what read-ahead takes
            INFO(w.describe());
            REQUIRE(w.pages.empty());
        }

        CacheHolder hostile(daemon, dir.file("data"), size);
        const int cfd = hostile.cache.get();
        // Where to plant: holes of the cache, every third page of the second half and a run
        // of 32 pages in the first.
        std::vector<std::uint64_t> candidates;
        for (std::uint64_t p = pages / 4; p < pages / 4 + 32; ++p) candidates.push_back(p);
        for (std::uint64_t p = pages / 2; p < pages; p += 3) candidates.push_back(p);
        std::vector<std::uint64_t> planted;
        for (const std::uint64_t p : candidates)
            if (!present(cfd, p)) planted.push_back(p);
        REQUIRE(planted.size() > candidates.size() / 2);

        const bool shared = how == "shared read", write = how == "private write";
        auto* hp = static_cast<std::uint8_t*>(::mmap(nullptr, size, PROT_READ | (write ? PROT_WRITE : 0),
                                                     shared ? MAP_SHARED : MAP_PRIVATE, cfd, 0));
        REQUIRE(hp != MAP_FAILED);
        unsigned sum = 0;
        for (const std::uint64_t p : planted) {
            if (write) hp[p * k_page + 7] = 0xA5;
            else sum += *static_cast<volatile std::uint8_t*>(hp + p * k_page);
        }
        (void)sum;
        // The kernel made the pages in the cache: present (SEEK_DATA, mincore), zeros.
        std::vector<unsigned char> resident(pages);
        REQUIRE(::mincore(hp, size, resident.data()) == 0);
        std::vector<std::uint64_t> foreign;  // planted pages the cache holds as zeros
        for (const std::uint64_t p : planted) {
            INFO("planted page " << p);
            CHECK(present(cfd, p));
            CHECK((resident[p] & 1));
            const auto bytes = cache_page(cfd, p);
            if (std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; })) foreign.push_back(p);
        }
        INFO(planted.size() << " pages planted, " << foreign.size() << " of them zero pages in the cache");
        // (A read-ahead of the victim's may have loaded a few before the hostile touched them.)
        REQUIRE(foreign.size() >= (victim_first ? planted.size() / 2 : planted.size()));
        if (!write) {
            const Wrong w = compare_pages(hp, want, foreign.front(), foreign.front() + 1);
            CHECK(w.zero_pages == 1);  // the hostile client sees its zero page (its own affair)
        }

        if (!victim_first) map_victim();
        {
            const Wrong w = compare_pages(vp, want, 0, pages);
            INFO("victim: " << w.describe());
            CHECK(w.pages.empty());
        }
        {
            auto second = daemon.connect("second victim");
            auto r = second->map_file(dir.file("data"), {0, size, Access::ReadOnly});
            REQUIRE(r.ok());
            const Wrong w = compare_pages(static_cast<const std::uint8_t*>(r->addr), want, 0, pages);
            INFO("second victim: " << w.describe());
            CHECK(w.pages.empty());
        }
        // The cache holds the file's bytes there now: the planted pages were thrown out.
        std::uint64_t still_wrong = 0;
        for (const std::uint64_t p : planted) still_wrong += !equals_file(cache_page(cfd, p), want, p);
        CHECK(still_wrong == 0);

        ::munmap(hp, size);
        CHECK(daemon.alive());
        CHECK(bystander.all_right());
        hostile.uffd.reset();
    }
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.cache_files == 0; }));
    CHECK(daemon.wait_fds_at_most(fds_at_start));
    CHECK_THAT(daemon.log(), !Catch::Contains("UFFDIO_COPY at offset"));
}

TEST_CASE("pages a client keeps making in the holes while another reads and the cache evicts are never shown",
          "[cache][hostile][race]")
{
    const std::string how = GENERATE(as<std::string>{}, "shared read", "private write");
    INFO(how);
    TempDir dir;
    const std::uint64_t size = 8 * k_mib, pages = size / k_page;
    make_file(dir.file("data"), size, 111);
    make_file(dir.file("other"), 256 * 1024, 112);
    const auto want = read_file(dir.file("data"));
    // A budget a quarter of the file: the victim's reads evict, and every evicted page is
    // a hole again for the hostile client to fill.
    Daemon daemon({"--memory-max", "2MiB"});
    const std::size_t fds_at_start = daemon.fd_count();
    {
        Bystander bystander(daemon, dir.file("other"));
        CacheHolder hostile(daemon, dir.file("data"), size);
        const bool shared = how == "shared read";
        auto* hp = static_cast<std::uint8_t*>(::mmap(nullptr, size, PROT_READ | (shared ? 0 : PROT_WRITE),
                                                     shared ? MAP_SHARED : MAP_PRIVATE, hostile.cache.get(), 0));
        REQUIRE(hp != MAP_FAILED);
        std::atomic<bool> stop{false};
        std::atomic<std::uint64_t> sweeps{0}, zeros_seen{0};
        std::thread planter([&] {
            while (!stop) {
                for (std::uint64_t p = 0; p < pages && !stop; ++p) {
                    if (shared) {
                        std::uint64_t head;
                        std::memcpy(&head, const_cast<const std::uint8_t*>(hp) + p * k_page, sizeof head);
                        zeros_seen += head == 0;
                    } else {
                        *static_cast<volatile std::uint8_t*>(hp + p * k_page) = 0xA5;
                    }
                }
                ::madvise(hp, size, MADV_DONTNEED);  // the next sweep faults every page again
                ++sweeps;
            }
        });
        auto victim = daemon.connect("victim");
        auto r = victim->map_file(dir.file("data"), {0, size, Access::ReadOnly});
        REQUIRE(r.ok());
        const auto* vp = static_cast<const std::uint8_t*>(r->addr);
        Wrong wrong;
        for (int round = 0; round < 4; ++round) {
            const Wrong w = compare_pages(vp, want, 0, pages);
            wrong.pages.insert(wrong.pages.end(), w.pages.begin(), w.pages.end());
            wrong.zero_pages += w.zero_pages;
        }
        const std::uint64_t swept = sweeps.load();
        stop = true;
        planter.join();
        INFO("victim: " << wrong.describe() << "; the hostile client swept the file " << swept << " times, saw "
                        << zeros_seen.load() << " zero pages");
        CHECK(wrong.pages.empty());
        CHECK(swept >= 2);
        if (shared) CHECK(zeros_seen.load() > 0);  // it did make pages in holes
        CHECK(daemon.status().cache_evictions > 0);
        ::munmap(hp, size);
        CHECK(daemon.alive());
        CHECK(bystander.all_right());
        hostile.uffd.reset();
    }
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.cache_files == 0; }));
    CHECK(daemon.wait_fds_at_most(fds_at_start));
}

TEST_CASE("MAP with CACHE is refused without MINOR_SHMEM, and for garbage input", "[cache][hostile][bad-input]")
{
    TempDir dir;
    const std::uint64_t size = 256 * 1024 + 100;  // a partial last page
    make_file(dir.file("data"), size, 81);
    make_file(dir.file("other"), 256 * 1024, 82);
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    {
        Bystander bystander(daemon, dir.file("other"));
        const std::uint64_t len = 16 * k_page, whole = round_up(size, k_page);
        Reservation mem(whole + k_page);
        const std::uint64_t a = mem.start();
        util::UniqueFd file(::open(dir.file("data").c_str(), O_RDONLY | O_CLOEXEC));
        REQUIRE(file);
        {
            RawClient c(daemon.socket());
            c.hello();
            c.send(proto::Map{a, len, 0, proto::k_map_cache, proto::Prefetch::NONE}, {file.get()});
            c.expect_error(proto::ErrorCode::NOT_READY);  // before REGISTER_UFFD
            const std::uint64_t features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON;
            auto plain = make_uffd_with(features);
            c.send(proto::RegisterUffd{features, 0}, {plain.get()});
            c.expect<proto::Ok>();
            for (const std::uint32_t flags : {proto::k_map_cache, proto::k_map_cache | proto::k_map_private_writable}) {
                c.send(proto::Map{a, len, 0, flags, proto::Prefetch::NONE}, {file.get()});
                const auto e = c.expect_error(proto::ErrorCode::NOT_READY);
                CHECK_THAT(e.text, Catch::Contains("MINOR_SHMEM"));
            }
            // It is the cache that needs the feature: the same region without it is mapped.
            c.send(proto::Map{a, len, 0, 0, proto::Prefetch::NONE}, {file.get()});
            const auto mapped = c.expect<proto::Mapped>();
            c.send(proto::Unmap{mapped.region_id});
            c.expect<proto::Ok>();
            c.send(proto::Ping{1});
            c.expect<proto::Pong>();
        }
        {
            RawClient c(daemon.socket());
            c.hello();
            auto uffd = make_uffd_with(k_cache_features);
            c.send(proto::RegisterUffd{k_cache_features, 0}, {uffd.get()});
            c.expect<proto::Ok>();
            const auto cache_map = [&](std::uint64_t addr, std::uint64_t length, std::uint64_t offset,
                                       std::uint32_t flags = proto::k_map_cache) {
                return proto::Map{addr, length, offset, flags, proto::Prefetch::NONE};
            };
            // Unknown bits, SHARED without CACHE, SHARED with PRIVATE_WRITABLE.
            for (const std::uint32_t flags :
                 {proto::k_map_cache | 1u << 3, proto::k_map_cache | 1u << 31, proto::k_map_shared,
                  proto::k_map_cache | proto::k_map_shared | proto::k_map_private_writable, 0xffffffffu}) {
                INFO("flags " << flags);
                c.send(cache_map(a, len, 0, flags), {file.get()});
                c.expect_error(proto::ErrorCode::BAD_RANGE);
            }
            c.send(proto::Map{a, len, 0, proto::k_map_cache, static_cast<proto::Prefetch>(7)}, {file.get()});
            c.expect_error(proto::ErrorCode::BAD_RANGE);
            c.send(cache_map(a + 1, len, 0), {file.get()});
            c.expect_error(proto::ErrorCode::BAD_RANGE);
            c.send(cache_map(a, 0, 0), {file.get()});
            c.expect_error(proto::ErrorCode::BAD_RANGE);
            c.send(cache_map(a, len, 100), {file.get()});
            c.expect_error(proto::ErrorCode::BAD_RANGE);
            c.send(cache_map(a, len, ~std::uint64_t{0} - k_page + 1), {file.get()});  // offset + length overflows
            c.expect_error(proto::ErrorCode::BAD_RANGE);

            util::UniqueFd wronly(::open(dir.file("data").c_str(), O_WRONLY | O_CLOEXEC));
            util::UniqueFd path(::open(dir.file("data").c_str(), O_PATH | O_CLOEXEC));
            util::UniqueFd directory(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            int pipefd[2];
            REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
            util::UniqueFd pipe_r(pipefd[0]), pipe_w(pipefd[1]);
            REQUIRE((wronly && path && directory));
            for (const int bad : {wronly.get(), path.get(), directory.get(), pipe_r.get()}) {
                INFO("descriptor " << bad);
                c.send(cache_map(a, len, 0), {bad});
                c.expect_error(proto::ErrorCode::BAD_DESCRIPTOR);
            }
            c.send(cache_map(a, len, 0), {});
            c.expect_error(proto::ErrorCode::BAD_DESCRIPTOR);
            c.send(cache_map(a, len, 0), {file.get(), file.get()});
            c.expect_error(proto::ErrorCode::BAD_DESCRIPTOR);

            c.send(cache_map(a, whole + k_page, 0), {file.get()});  // longer than the file
            c.expect_error(proto::ErrorCode::PAST_EOF);
            c.send(cache_map(a, k_page, whole), {file.get()});  // wholly past its end
            c.expect_error(proto::ErrorCode::PAST_EOF);
            c.send(cache_map(a, len, whole - len + k_page), {file.get()});
            c.expect_error(proto::ErrorCode::PAST_EOF);

            // None of it opened a cache (the bystander's is the one).
            CHECK(daemon.status().cache_files == 1);

            // A right one still works, its last page partial: CACHE_MAPPED and one descriptor.
            c.send(cache_map(a, whole, 0, proto::k_map_cache | proto::k_map_private_writable), {file.get()});
            auto got = c.receive_with_fds();
            REQUIRE(got.has_value());
            const auto* cm = std::get_if<proto::CacheMapped>(&got->msg.body);
            REQUIRE(cm != nullptr);
            REQUIRE(got->fds.size() == 1);
            struct stat st{};
            REQUIRE(::fstat(got->fds[0].get(), &st) == 0);
            CHECK(static_cast<std::uint64_t>(st.st_size) >= whole);
            CHECK(daemon.status().cache_files == 2);
            // Overlapping it: refused, and no second cache of the file.
            c.send(cache_map(a + k_page, k_page, 0), {file.get()});
            c.expect_error(proto::ErrorCode::OVERLAP);
            CHECK(daemon.status().cache_files == 2);
            c.send(proto::Unmap{cm->region_id});
            c.expect<proto::Ok>();
            CHECK(daemon.wait_until([](const auto& s) { return s.cache_files == 1; }));
            c.send(proto::Ping{2});
            c.expect<proto::Pong>();
        }
        CHECK(daemon.alive());
        CHECK(bystander.all_right());
    }
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.cache_files == 0; }));
    CHECK(daemon.wait_fds_at_most(fds_at_start));
}

TEST_CASE("a client that dies with cache regions mapped leaves the cache to the others", "[cache][hostile][death]")
{
    const std::string how = GENERATE(as<std::string>{}, "idle", "faulting");
    INFO("killed while " << how);
    TempDir dir;
    const std::uint64_t size = 8 * k_mib, pages = size / k_page;
    const std::uint32_t seed = 91;
    make_file(dir.file("data"), size, seed);
    make_file(dir.file("other"), 256 * 1024, 92);
    const auto want = read_file(dir.file("data"));
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    int pipefd[2];
    REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
    // Forked before this process opens any connection (harness.hpp).
    const pid_t pid = start_child([&] {
        ::close(pipefd[0]);
        auto c = libclient::Connection::connect({daemon.socket(), "doomed"});
        if (!c) return 3;
        auto r = c.value()->map_file(dir.file("data"), {0, size, Access::ReadOnly});
        auto w = c.value()->map_file(dir.file("data"), {0, size, Access::PrivateWritable});
        if (!r || !w) return 4;
        const auto* p = static_cast<const std::uint8_t*>(r->addr);
        auto* q = static_cast<std::uint8_t*>(w->addr);
        for (std::uint64_t off = 0; off < size / 2; off += 512)
            if (p[off] != want[off]) return 5;
        for (std::uint64_t off = 0; off < size / 2; off += k_page) q[off] = static_cast<std::uint8_t>(~want[off]);
        if (::write(pipefd[1], "x", 1) != 1) return 6;
        if (how == "idle")
            for (;;) ::pause();
        // Faults without end: the second half, then again after dropping the pages.
        for (unsigned sum = 0;; ::madvise(r->addr, size, MADV_DONTNEED))
            for (std::uint64_t off = 0; off < size; off += k_page) sum += *static_cast<volatile const std::uint8_t*>(p + off);
    });
    ::close(pipefd[1]);
    char x = 0;
    const bool ready = ::read(pipefd[0], &x, 1) == 1;
    ::close(pipefd[0]);
    if (!ready) {
        const int status = wait_child(pid, 5s);
        FAIL("the doomed client failed before it was ready: " << describe_status(status));
    }
    {
        Bystander bystander(daemon, dir.file("other"));
        auto sharer = daemon.connect("sharer");
        auto r = sharer->map_file(dir.file("data"), {0, size, Access::ReadOnly});
        REQUIRE(r.ok());
        const auto* sp = static_cast<const std::uint8_t*>(r->addr);
        {
            const Wrong w = compare_pages(sp, want, 0, pages / 4);
            INFO(w.describe());
            REQUIRE(w.pages.empty());
        }
        const auto before = daemon.status();
        CHECK(before.cache_files == 2);
        CHECK(before.cache_hits > 0);  // the half the doomed client loaded was shared
        if (how == "faulting") std::this_thread::sleep_for(50ms);
        REQUIRE(::kill(pid, SIGKILL) == 0);
        CHECK(killed_by(wait_child(pid, 5s), SIGKILL));
        REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 3; }));
        {
            const Wrong w = compare_pages(sp, want, 0, pages);
            INFO("after the kill: " << w.describe());
            CHECK(w.pages.empty());
        }
        {
            auto late = daemon.connect("late");
            auto lr = late->map_file(dir.file("data"), {0, size, Access::ReadOnly});
            REQUIRE(lr.ok());
            const Wrong w = compare_pages(static_cast<const std::uint8_t*>(lr->addr), want, 0, pages);
            INFO("late reader: " << w.describe());
            CHECK(w.pages.empty());
        }
        CHECK(daemon.status().cache_files == 2);
        CHECK(daemon.alive());
        CHECK(bystander.all_right());
    }
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.regions == 0; }));
    CHECK(daemon.wait_until([](const auto& s) { return s.cache_files == 0 && s.cache_bytes == 0; }));
    const auto s = daemon.status();
    INFO("cache_files " << s.cache_files << ", cache_bytes " << s.cache_bytes);
    CHECK(daemon.wait_fds_at_most(fds_at_start));
}

// The daemon maps every cache whole (and room to grow): address space, free until touched
// but finite, and a client names the files. One client with a page of each of a few huge
// sparse files (ftruncate: no disk, no memory) must not leave the daemon unable to cache a
// small file for anyone else.
TEST_CASE("the caches of a client's huge sparse files do not take the address space others need",
          "[cache][hostile][limit]")
{
    TempDir dir;
    const std::uint64_t small = 1 * k_mib;
    make_file(dir.file("data"), small, 101);
    make_file(dir.file("other"), 256 * 1024, 102);
    const auto want = read_file(dir.file("data"));
    Daemon daemon;
    const std::size_t fds_at_start = daemon.fd_count();
    {
        Bystander bystander(daemon, dir.file("other"));
        RawClient c(daemon.socket());
        c.hello();
        auto uffd = make_uffd_with(k_cache_features);
        c.send(proto::RegisterUffd{k_cache_features, 0}, {uffd.get()});
        c.expect<proto::Ok>();
        Reservation mem(1024 * k_page);  // a page for each region
        // One page of each of many sparse files, as large as the file system allows, then
        // smaller ones, until the daemon says no even to a file as small as the victim's.
        std::vector<util::UniqueFd> caches;
        std::uint64_t files = 0, granted = 0, refused = 0;
        std::string last_refusal;
        for (std::uint64_t size = std::uint64_t{15} << 40; size >= small && granted < 1000; size /= 2) {
            while (granted < 1000) {
                const std::string path = dir.file("sparse" + std::to_string(files++));
                {
                    util::UniqueFd f(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
                    REQUIRE(f);
                    if (::ftruncate(f.get(), static_cast<off_t>(size)) != 0) {
                        REQUIRE(errno == EFBIG);  // larger than this file system's files
                        break;
                    }
                }
                util::UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
                c.send(proto::Map{mem.start() + granted * k_page, k_page, 0, proto::k_map_cache, proto::Prefetch::NONE},
                       {f.get()});
                auto got = c.receive_with_fds();
                REQUIRE(got.has_value());
                if (const auto* e = std::get_if<proto::ErrorReply>(&got->msg.body)) {
                    ++refused;
                    last_refusal = e->text;
                    break;
                }
                const auto* cm = std::get_if<proto::CacheMapped>(&got->msg.body);
                REQUIRE(cm != nullptr);
                ++granted;
                caches.push_back(std::move(got->fds[0]));
            }
        }
        INFO(granted << " caches granted to the hostile client, " << refused << " refused, the last: " << last_refusal);
        CHECK(daemon.alive());
        // A victim maps and reads a small file.
        auto victim = daemon.connect("victim");
        auto r = victim->map_file(dir.file("data"), {0, small, Access::ReadOnly});
        INFO("victim: " << (r.ok() ? std::string("mapped") : r.error().message));
        CHECK(r.ok());
        if (r.ok()) CHECK(std::memcmp(r->addr, want.data(), small) == 0);
        CHECK(daemon.alive());
        CHECK(bystander.all_right());
        uffd.reset();
    }
    REQUIRE(daemon.wait_until([](const auto& s) { return s.clients == 1 && s.cache_files == 0; }));
    CHECK(daemon.wait_fds_at_most(fds_at_start));
}
