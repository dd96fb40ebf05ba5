// The C API and the shared library's exported interface.
#include <catch2/catch.hpp>

#include <sstream>

#include "harness.hpp"

using namespace pagerd::test;

TEST_CASE("a C program maps a file through the C API of the shared library", "[capi]")
{
    TempDir dir;
    make_file(dir.file("data"), 200001, 17);
    const auto expect = read_file(dir.file("data"));
    Daemon daemon;
    auto r = run_command({CAPI_CAT_BINARY, daemon.socket(), dir.file("data")});
    INFO(r.err);
    REQUIRE(exited_with(r.status, 0));
    REQUIRE(r.out == std::string(expect.begin(), expect.end()));
    auto none = run_command({CAPI_CAT_BINARY, dir.file("no.sock"), dir.file("data")});
    CHECK(exited_with(none.status, 3));
    CHECK_THAT(none.err, Catch::Contains("is pagerd running"));
}

TEST_CASE("the shared library exports the C API and pagerd::libclient only", "[capi][abi]")
{
    auto r = run_command({"/bin/sh", "-c", std::string("nm -D --defined-only ") + CLIENT_SHARED_LIB});
    REQUIRE(exited_with(r.status, 0));
    std::istringstream lines(r.out);
    std::string line;
    int c_api = 0, cpp_api = 0;
    while (std::getline(lines, line)) {
        const std::string sym = line.substr(line.rfind(' ') + 1);
        INFO(sym);
        if (sym.rfind("pagerd_", 0) == 0) ++c_api;
        else if (sym.find("6pagerd9libclient") != std::string::npos) ++cpp_api;
        else CHECK(sym == "PAGERD_CLIENT_1");  // the version node, nothing else
    }
    CHECK(c_api >= 10);
    CHECK(cpp_api >= 8);
}
