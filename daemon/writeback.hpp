// Writing pages of a Shared region's memfd to its file through io_uring, then fdatasync.
#pragma once
#include <liburing.h>

#include <cstdint>
#include <string>
#include <vector>

#include "region_table.hpp"

namespace pagerd::daemon {

struct PageRun {
    std::uint64_t first;  // page index in the memfd
    std::uint64_t count;
};

class Writeback {
public:
    explicit Writeback(std::uint32_t page_size);
    ~Writeback();
    Writeback(const Writeback&) = delete;
    Writeback& operator=(const Writeback&) = delete;

    struct Outcome {
        std::uint64_t pages = 0;
        std::uint64_t bytes = 0;
        int error = 0;  // errno of the first failed write or fdatasync
    };
    // Writes the pages of `runs` that the memfd holds (never touching one it does not
    // hold), clipped at the file's current size, then fdatasync. Synchronous.
    Outcome write(const SharedMemory& mem, const std::vector<PageRun>& runs);

private:
    void queue_write(int fd, const std::uint8_t* src, std::uint64_t len, std::uint64_t off);
    int drain(unsigned expected);

    std::uint32_t m_page;
    io_uring m_ring{};
    unsigned m_queued = 0;
};

}  // namespace pagerd::daemon
