#pragma once
#include <cstdint>
#include <string>

#include "pagerd/client.hpp"

namespace pagerd::pagerctl {

struct CatOptions {
    std::string file;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;  // 0: to the end of the file
    bool random = false;
    unsigned threads = 1;
    libclient::Prefetch prefetch = libclient::Prefetch::Sequential;  // --prefetch
};

struct WriteOptions {
    std::string file;
    std::uint64_t offset = 0;
    std::string tracking = "auto";
};

int run_status(const std::string& socket, bool json);
int run_write(const std::string& socket, const WriteOptions& o);
int run_cat(const std::string& socket, const CatOptions& o);
int report(const Error& e);  // prints "pagerctl: message", returns the exit code 1

}  // namespace pagerd::pagerctl
