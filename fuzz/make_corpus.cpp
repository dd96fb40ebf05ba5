// Writes the seed corpora of the fuzz targets: a valid encoding of every message type (made
// by the real encoder) into DIR/decode/ and DIR/roundtrip/, and descriptor-store states in
// the format of fdstore.cpp's describe() into DIR/fdstore/. Usage: make_corpus DIR
// (cmake --build build-fuzz --target pagerd_fuzz_corpus writes fuzz/corpus/).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "pagerd/proto/codec.hpp"

using namespace pagerd::proto;
namespace fs = std::filesystem;

namespace {

RegionEntry entry(std::uint64_t i)
{
    RegionEntry e;
    e.client = i + 1;
    e.pid = static_cast<std::uint32_t>(1000 + i);
    e.access = static_cast<Access>(i % 3);
    e.tracking = e.access == Access::SHARED ? static_cast<Tracking>(1 + i % 3) : Tracking::NONE;
    e.region_id = i + 1;
    e.length = (i + 1) << 20;
    e.dirty_pages = i;
    e.prefetch = static_cast<Prefetch>(i % 3);
    e.faults = 100 * i;
    e.latency_p50_ns = 5000;
    e.latency_p99_ns = 40000;
    e.prefetch_pending = i % 2 ? 65536 : 0;
    for (std::size_t b = 0; b < e.latency_histogram.size(); ++b) e.latency_histogram[b] = static_cast<std::uint32_t>(b * i);
    return e;
}

std::vector<std::pair<std::string, Message>> messages()
{
    StatusReply status;
    status.uptime_ms = 123456;
    status.workers = 2;
    status.clients = 3;
    status.regions = 4;
    status.mapped_bytes = 1 << 30;
    status.faults = 1000;
    status.pages_installed = 5000;
    status.bytes_read = 5000 * 4096;
    status.sigbus_faults = 1;
    status.latency_p50_ns = 4096;
    status.latency_p99_ns = 65536;
    status.latency_max_ns = 1000000;
    status.user_mode_only_clients = 1;
    status.requester_flags = k_uffd_user_mode_only;
    status.requester_regions = 2;
    status.pages_prefetched = 4000;
    status.cache_budget = std::uint64_t{1} << 30;
    status.cache_bytes = 256 << 20;
    status.cache_files = 2;
    status.cache_loads = 65536;
    status.cache_hits = 100000;
    status.cache_evictions = 512;
    status.cache_refaults = 16;
    status.cache_dirty_bytes = 12 * 4096;
    status.cache_writebacks = 64;
    for (std::size_t b = 0; b < status.latency_histogram.size(); ++b) status.latency_histogram[b] = b * 10;
    status.version = "pagerd 0.1.0";
    RegionsReply some{3, 0, {entry(0), entry(1), entry(2)}};
    RegionsReply full{40, 0, {}};
    for (std::uint64_t i = 0; i < k_max_region_entries; ++i) full.entries.push_back(entry(i));
    return {
        {"01-hello", {1, Hello{cap::FILE_STORE, cap::STATUS | cap::PREFETCH, "pagerctl"}}},
        {"01-hello-longest-name", {2, Hello{0, 0, std::string(k_max_name, 'n')}}},
        {"02-welcome", {1, Welcome{0x7f, 4096, 1024, std::uint64_t{1} << 40, "pagerd 0.1.0"}}},
        {"03-register-uffd", {3, RegisterUffd{0x1ff, 0}}},
        {"03-register-uffd-async", {4, RegisterUffd{std::uint64_t{1} << 15, k_uffd_async_wp}}},
        {"04-map", {5, Map{0x7f0000000000, 1 << 20, 0, 0, Prefetch::SEQUENTIAL}}},
        {"04-map-private-all", {6, Map{0x7f0000100000, 1 << 16, 4096, k_map_private_writable, Prefetch::ALL}}},
        {"04-map-cache-shared", {7, Map{0x7f0000400000, 1 << 20, 0, k_map_cache | k_map_shared, Prefetch::SEQUENTIAL}}},
        {"05-mapped", {5, Mapped{1}}},
        {"19-cache-mapped", {5, CacheMapped{1}}},
        {"20-caches", {6, CachesRequest{0}}},
        {"21-caches-reply", {7, CachesReply{2, 0, 64769, 1234, 1 << 30, 1 << 20, 2, 3, 8192}}},
        {"06-unmap", {7, Unmap{1}}},
        {"07-ok", {7, Ok{}}},
        {"08-status", {8, StatusRequest{}}},
        {"09-status-reply", {8, status}},
        {"10-ping", {9, Ping{0x1122334455667788}}},
        {"11-pong", {9, Pong{0x1122334455667788}}},
        {"12-error", {10, ErrorReply{ErrorCode::BAD_RANGE, "length 0 is not a multiple of the page size"}}},
        {"12-error-unsolicited", {0, ErrorReply{ErrorCode::TIMEOUT, "no HELLO within 5000 ms"}}},
        {"13-shared-map", {11, MapShared{0x7f0000200000, 1 << 20, 0, Tracking::UFFD_WP, Prefetch::NONE}}},
        {"13-shared-map-async", {12, MapShared{0x7f0000300000, 1 << 16, 8192, Tracking::ASYNC, Prefetch::SEQUENTIAL}}},
        {"14-flush", {13, Flush{0}}},
        {"15-flushed", {13, Flushed{16, 65536}}},
        {"16-regions", {14, RegionsRequest{0}}},
        {"17-regions-reply-empty", {14, RegionsReply{0, 0, {}}}},
        {"17-regions-reply", {14, some}},
        {"17-regions-reply-full", {15, full}},
        {"18-prefetch", {16, PrefetchRequest{0x7f0000000000, 1 << 20, 0}}},
        {"18-prefetch-wait", {17, PrefetchRequest{0x7f0000000000, 1 << 16, k_prefetch_wait}}},
        {"22-map-store-nbd", {18, MapStore{0x7f0000500000, 1 << 20, 0, k_map_cache, Prefetch::SEQUENTIAL,
                                           "nbd://storage.example:10809/disk0"}}},
        {"22-map-store-nbd-unix-shared",
         {19, MapStore{0x7f0000600000, 1 << 20, 1 << 20, k_map_cache | k_map_shared, Prefetch::NONE,
                       "nbd+unix:///disk1?socket=/run/nbd/disk1.sock"}}},
        {"22-map-store-zero", {20, MapStore{0x7f0000700000, 1 << 30, 0, k_map_cache | k_map_private_writable,
                                            Prefetch::ALL, "zero:1G"}}},
        {"22-map-store-longest-uri", {21, MapStore{0x7f0000800000, 4096, 0, k_map_cache, Prefetch::SEQUENTIAL,
                                                   "nbd://h/" + std::string(k_max_uri - 8, 'e')}}},
        {"23-stores", {22, StoresRequest{0}}},
        {"24-stores-reply-nbd", {22, StoresReply{2, 0, "nbd", "nbd://storage.example:10809/disk0", 1ull << 34, 4, 2,
                                                  1000, 1000 * 131072, 1, 3, 1, 2, 50, 50 * 65536, 0, 250000,
                                                  8000000}}},
        {"24-stores-reply-file", {23, StoresReply{2, 1, "file", "file:64769:1234", 1 << 30, 0, 0, 10, 10 * 4096, 0,
                                                   0, 0, 0, 0, 0, 0, 20000, 90000}}},
        {"24-stores-reply-past-end", {24, StoresReply{2, 2, "", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}},
    };
}

// The text fdstore.cpp's describe() writes: "client serial pid uid gid name-hex hello_done
// uffd_flags features0 features1 next_region_id", "forked parent_serial" for a forked
// child (and "lost start length" per region it could not keep), then per region "region id start length
// file_offset access tracking uffd_slot mem_offset file_base mem_length mapped prefetch
// cached".
std::vector<std::pair<std::string, std::string>> states()
{
    const std::string head = "pagerd-client-state 1\n";
    return {
        {"hello-only", head + "client 1 4242 1000 1000 70616765726374 1 0 0 0 1\n"},
        {"no-name", head + "client 2 4243 0 0 - 0 0 0 0 1\n"},
        {"regions",
         head + "client 7 5000 1000 1000 64656d6f 1 0 511 32768 4\n"
                "region 1 139637976727552 1048576 0 0 0 0 0 0 0 0 0\n"
                "region 2 139637977776128 65536 4096 1 0 0 0 0 0 0 2\n"
                "region 3 139637977841664 524288 0 2 1 0 0 0 1048576 1052672 1\n"
                "region 3 139637978628096 262144 786432 2 1 0 786432 0 1048576 1052672 1\n"
                "region 4 139637978894336 65536 0 2 3 1 0 0 65536 69632 0\n"},
        {"cached",  // regions in the daemon's page cache: read-only, private, Shared (uffd-wp)
         head + "client 11 5002 1000 1000 636163686564 1 0 21569 0 4\n"
                "region 1 139637976727552 1048576 0 0 0 0 0 0 0 0 1 1\n"
                "region 2 139637977776128 65536 4096 1 0 0 0 0 0 0 0 1\n"
                "region 3 139637977841664 524288 0 2 1 0 0 0 0 0 0 1\n"},
        {"forked",  // a forked child (no socket) of client 11, with the cached regions it inherited
         head + "client 12 0 1000 1000 636163686564202866726f6d20313129 1 0 21569 0 4\n"
                "forked 11\n"
                "region 1 139637976727552 1048576 0 0 0 0 0 0 0 0 1 1\n"
                "lost 139637978894336 65536\n"
                "region 3 139637977841664 524288 0 2 1 0 0 0 0 0 0 1\n"
                "end\n"},
        {"older-daemon-no-prefetch",
         head + "client 9 5001 1000 1000 6f6c64 1 1 511 0 2\n"
                "region 1 139637976727552 1048576 0 0 0 0 0 0 0 0\n"},
    };
}

void write(const fs::path& file, const std::string& bytes)
{
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
        std::fprintf(stderr, "make_corpus: cannot write %s\n", file.c_str());
        std::exit(1);
    }
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    const fs::path dir = argv[1];
    for (const char* target : {"decode", "roundtrip"}) {
        fs::create_directories(dir / target);
        for (const auto& [name, msg] : messages()) {
            const auto bytes = encode(msg);
            const auto back = decode(bytes, fds_expected(type_of(msg.body)));
            if (!back) {
                std::fprintf(stderr, "make_corpus: %s does not decode: %s\n", name.c_str(), back.error().message.c_str());
                return 1;
            }
            write(dir / target / name, std::string(bytes.begin(), bytes.end()));
        }
    }
    fs::create_directories(dir / "fdstore");
    for (const auto& [name, text] : states()) write(dir / "fdstore" / name, text);
    return 0;
}
