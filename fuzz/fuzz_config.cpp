// libFuzzer target: the daemon's config file (--config FILE, TOML/INI, read through CLI11
// by daemon/config.cpp at start and again on every SIGHUP). The input is the file. It must
// be refused with a message or accepted with every value inside the range its option
// promises (pagerd --help), since the daemon sizes buffers and aligns loads by them.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <iostream>
#include <string>

#include "check.hpp"
#include "config.hpp"

using namespace pagerd::daemon;

namespace {

// The file: one memfd, rewritten for every input, read through /proc/self/fd.
const std::string& config_path()
{
    static const std::string path = [] {
        const int fd = ::memfd_create("pagerd-fuzz-config", MFD_CLOEXEC);
        FUZZ_CHECK(fd >= 0);
        return "/proc/self/fd/" + std::to_string(fd);
    }();
    return path;
}

int config_fd() { return std::stoi(config_path().substr(std::string("/proc/self/fd/").size())); }

bool pow2(std::uint64_t v) { return v && (v & (v - 1)) == 0; }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    // CLI11 prints every refusal (and --help) to std::cout / std::cerr: not worth the time.
    std::cout.rdbuf(nullptr);
    std::cerr.rdbuf(nullptr);
    ::unsetenv("PAGERD_SOCKET");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const int fd = config_fd();
    FUZZ_CHECK(::ftruncate(fd, 0) == 0);
    FUZZ_CHECK(::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));
    std::string path = config_path();
    char arg0[] = "pagerd", arg1[] = "--config";
    char* argv[] = {arg0, arg1, path.data(), nullptr};
    const ParsedConfig parsed = parse_config(3, argv);
    if (!parsed.config) return 0;
    const Config& c = *parsed.config;
    FUZZ_CHECK(!c.socket_path.empty());
    FUZZ_CHECK(c.workers >= 1 && c.workers <= 256);
    FUZZ_CHECK(c.log_level == "trace" || c.log_level == "debug" || c.log_level == "info" || c.log_level == "warn" ||
               c.log_level == "error" || c.log_level == "critical" || c.log_level == "off");
    FUZZ_CHECK(c.max_clients >= 1 && c.max_clients <= 1000000);
    FUZZ_CHECK(c.max_regions_per_client >= 1 && c.max_regions_per_client <= 1000000);
    FUZZ_CHECK(c.max_mapped_bytes_per_client > 0);
    FUZZ_CHECK(c.hello_timeout_ms >= 1 && c.hello_timeout_ms <= 3600000);
    FUZZ_CHECK(pow2(c.fault_block_bytes) && c.fault_block_bytes >= 4096 && c.fault_block_bytes <= 2u << 20);
    FUZZ_CHECK(c.readahead_max_bytes <= std::uint64_t{64} << 20);
    FUZZ_CHECK(c.staging_buffers >= 4 && c.staging_buffers <= 4096);
    FUZZ_CHECK(c.poll_us <= 1000000);
    FUZZ_CHECK(c.store_connections >= 1 && c.store_connections <= 64);
    FUZZ_CHECK(c.store_timeout_ms >= 100 && c.store_timeout_ms <= 3600000);
    return 0;
}
