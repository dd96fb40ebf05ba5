// The Catch2 main of every test executable, with one check of the test names first.
//
// Catch2 2.13's console reporter indents the wrapped lines of a test's header by the
// position after the first ": " in its name; past the console width (80) that indent
// makes it loop for ever, writing the same line, when the test fails or warns. CTest then
// buffers the flood until it dies of std::bad_alloc: a failing test took the whole run
// with it, its failure unseen. Such a name is refused here, before any test runs.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char* argv[])
{
    constexpr std::size_t k_max_colon = 72;  // the loop starts at 79
    int bad = 0;
    for (const auto& tc : Catch::getRegistryHub().getTestCaseRegistry().getAllTests())
        if (const auto i = tc.name.find(": "); i != std::string::npos && i + 2 > k_max_colon) {
            std::fprintf(stderr, "test name with \": \" past column %zu (Catch2 would loop printing it): %s\n",
                         k_max_colon, tc.name.c_str());
            ++bad;
        }
    if (bad) return 2;
    return Catch::Session().run(argc, argv);
}
