// pagerd-run [--map GLOB]... [--min-size N] [--socket PATH] [--timeout-ms N] [--debug]
//            -- PROGRAM ARGS...
// Runs PROGRAM with libpagerd-preload.so, so that its file mappings are served by pagerd:
// sets LD_PRELOAD (before any preload already there) and the PAGERD_* variables the
// library reads, then execs PROGRAM. Exit status: PROGRAM's; 125 for a usage error or a
// library not found, 126 if PROGRAM cannot be run, 127 if it is not found (as env(1)).
// docs/preload.md says what is taken and what falls back.
#include <limits.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "size.hpp"

namespace pagerd::preload {
namespace {

constexpr int k_usage = 125;

int usage_error(const std::string& what)
{
    std::fprintf(stderr, "pagerd-run: %s\nRun with --help for more information.\n", what.c_str());
    return k_usage;
}

bool readable(const std::string& path) { return !path.empty() && ::access(path.c_str(), R_OK) == 0; }

// $PAGERD_PRELOAD_LIB; else next to this program (the build tree); else where it is
// installed relative to this program; else where it was to be installed.
std::string find_library(std::string& tried)
{
    if (const char* env = std::getenv("PAGERD_PRELOAD_LIB"); env && *env) {
        tried = std::string(env) + " (PAGERD_PRELOAD_LIB)";
        return readable(env) ? env : "";
    }
    std::vector<std::string> candidates;
    char exe[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        std::string dir(exe, static_cast<std::size_t>(n));
        dir.resize(dir.rfind('/'));
        candidates.push_back(dir + "/" PAGERD_PRELOAD_NAME);
        candidates.push_back(dir + "/" PAGERD_PRELOAD_REL "/" PAGERD_PRELOAD_NAME);
    }
    candidates.push_back(PAGERD_PRELOAD_INSTALLED);
    for (const auto& c : candidates) {
        if (readable(c)) {
            char real[PATH_MAX];
            return ::realpath(c.c_str(), real) ? real : c;
        }
        tried += (tried.empty() ? "" : ", ") + c;
    }
    return "";
}

int run(int argc, char** argv)
{
    CLI::App app{"Runs PROGRAM with its file mappings served by pagerd (libpagerd-preload.so).\n"
                 "What cannot be served falls back to the kernel's mmap; see docs/preload.md.",
                 "pagerd-run"};
    std::vector<std::string> globs;
    std::string min_size, socket, timeout_ms;
    bool debug = false;
    app.add_option("--map", globs,
                   "Serve only files whose path matches GLOB (fnmatch, '*' also matches '/'); repeatable. "
                   "Default: $PAGERD_MAP, else every regular file")
        ->type_name("GLOB")
        ->allow_extra_args(false);
    app.add_option("--min-size", min_size,
                   "Serve only files of at least N bytes (suffixes K, M, G: powers of 1024). Default: 1M")
        ->type_name("N");
    app.add_option("--socket", socket, "pagerd's socket. Default: $PAGERD_SOCKET, else /run/pagerd/pagerd.sock")
        ->type_name("PATH");
    app.add_option("--timeout-ms", timeout_ms,
                   "How long the library waits for pagerd before falling back. Default: 2000")
        ->type_name("N");
    app.add_flag("--debug", debug, "One line on stderr per file mapping: taken, or fell back and why");
    app.prefix_command();
    app.footer("Usage: pagerd-run [OPTIONS] [--] PROGRAM [ARGS...]");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }
    std::vector<std::string> command = app.remaining();
    if (!command.empty() && command.front() == "--") command.erase(command.begin());
    if (command.empty()) return usage_error("no PROGRAM to run");
    // An option of ours misspelt comes back as the command; after "--" it is a program.
    const bool dashdash = std::find(argv + 1, argv + argc, std::string("--")) != argv + argc;
    if (!dashdash && command.front().size() > 1 && command.front()[0] == '-')
        return usage_error("unknown option " + command.front() + " (a PROGRAM whose name starts with '-' comes after --)");

    std::string map;
    for (const auto& g : globs) {
        if (g.empty() || g.find(':') != std::string::npos)
            return usage_error("--map '" + g + "': a GLOB is not empty and has no ':' (PAGERD_MAP separates them with ':')");
        map += (map.empty() ? "" : ":") + g;
    }
    if (!min_size.empty() && !parse_size(min_size.c_str()))
        return usage_error("--min-size '" + min_size + "' is not a size (digits, then optionally K, M or G)");
    if (!timeout_ms.empty()) {
        const auto t = parse_size(timeout_ms.c_str());
        if (!t || *t == 0 || *t > 3600000 || timeout_ms.find_first_not_of("0123456789") != std::string::npos)
            return usage_error("--timeout-ms '" + timeout_ms + "' is not a number of milliseconds from 1 to 3600000");
    }
    std::string tried;
    const std::string lib = find_library(tried);
    if (lib.empty()) return usage_error("libpagerd-preload.so not found (tried " + tried + ")");
    if (lib.find_first_of(": ") != std::string::npos)
        return usage_error("the library's path '" + lib + "' has a ':' or a space, which LD_PRELOAD cannot carry");

    const char* old = std::getenv("LD_PRELOAD");
    const std::string preload = old && *old ? lib + ":" + old : lib;
    ::setenv("LD_PRELOAD", preload.c_str(), 1);
    if (!globs.empty()) ::setenv("PAGERD_MAP", map.c_str(), 1);
    if (!min_size.empty()) ::setenv("PAGERD_MIN_SIZE", std::to_string(*parse_size(min_size.c_str())).c_str(), 1);
    if (!socket.empty()) ::setenv("PAGERD_SOCKET", socket.c_str(), 1);
    if (!timeout_ms.empty()) ::setenv("PAGERD_TIMEOUT_MS", timeout_ms.c_str(), 1);
    if (debug) ::setenv("PAGERD_DEBUG", "1", 1);

    std::vector<char*> args;
    for (auto& a : command) args.push_back(a.data());
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    const int err = errno;
    std::fprintf(stderr, "pagerd-run: cannot run %s: %s\n", args[0], std::strerror(err));
    return err == ENOENT ? 127 : 126;
}

}  // namespace
}  // namespace pagerd::preload

int main(int argc, char** argv) { return pagerd::preload::run(argc, argv); }
