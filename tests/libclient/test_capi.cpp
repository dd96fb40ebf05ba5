// The C API and the shared library's exported interface.
#include <catch2/catch.hpp>

#include <cstring>
#include <sstream>

#include "harness.hpp"

using namespace pagerd::test;

TEST_CASE("a C program maps a file through the C API of the shared library", "[capi]")
{
    TempDir dir;
    make_file(dir.file("data"), 200001, 17);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    make_file(dir.file("target"), 8192, 18);
    auto target = read_file(dir.file("target"));
    auto r = run_command({CAPI_CAT_BINARY, daemon.socket(), dir.file("data"), dir.file("target")});
    INFO(r.err);
    REQUIRE(exited_with(r.status, 0));
    REQUIRE(r.out == std::string(expect.begin(), expect.end()));
    std::memcpy(target.data() + 4096, "C API", 5);
    CHECK(read_file(dir.file("target")) == target);
    auto none = run_command({CAPI_CAT_BINARY, dir.file("no.sock"), dir.file("data")});
    CHECK(exited_with(none.status, 3));
    CHECK_THAT(none.err, Catch::Contains("is pagerd running"));
}

TEST_CASE("the shared library exports the C API, the UMap API and pagerd::libclient only", "[capi][abi]")
{
    auto r = run_command({"/bin/sh", "-c", std::string("nm -D --defined-only ") + CLIENT_SHARED_LIB});
    REQUIRE(exited_with(r.status, 0));
    std::istringstream lines(r.out);
    std::string line;
    int c_api = 0, cpp_api = 0, umap_api = 0;
    while (std::getline(lines, line)) {
        const std::string versioned = line.substr(line.rfind(' ') + 1);
        const std::string sym = versioned.substr(0, versioned.find('@'));
        INFO(sym);
        if (sym.rfind("pagerd_", 0) == 0) ++c_api;
        else if (sym.find("6pagerd9libclient") != std::string::npos) ++cpp_api;
        else if (sym == "umap" || sym == "uunmap" || sym.rfind("umap_", 0) == 0 || sym.rfind("umapcfg_", 0) == 0) ++umap_api;
        else CHECK(versioned == "PAGERD_CLIENT_1");  // the version node, nothing else
    }
    CHECK(c_api >= 10);
    CHECK(cpp_api >= 8);
    CHECK(umap_api >= 12);
}
