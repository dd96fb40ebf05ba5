// The pagerd command line: options, config file, socket handling, clean stop.
#include <catch2/catch.hpp>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "harness.hpp"

using namespace pagerd::test;

TEST_CASE("pagerd --version and --help", "[cli]")
{
    auto v = run_command({PAGERD_BINARY, "--version"});
    CHECK(exited_with(v.status, 0));
    CHECK_THAT(v.out, Catch::Contains("pagerd 0.1.0"));
    auto h = run_command({PAGERD_BINARY, "--help"});
    CHECK(exited_with(h.status, 0));
    for (const char* opt : {"--socket", "--workers", "--log-level", "--config", "--version", "--max-clients",
                            "--max-regions-per-client", "--max-mapped-bytes-per-client", "--hello-timeout-ms"})
        CHECK_THAT(h.out, Catch::Contains(opt));
}

TEST_CASE("pagerd rejects bad options with a message and a non-zero exit", "[cli]")
{
    for (std::vector<std::string> args : {std::vector<std::string>{"--workers", "many"},
                                          {"--log-level", "loud"},
                                          {"--fault-block", "5000"},
                                          {"--no-such-option"},
                                          {"--config", "/nonexistent/pagerd.conf"}}) {
        std::vector<std::string> argv{PAGERD_BINARY};
        argv.insert(argv.end(), args.begin(), args.end());
        auto r = run_command(argv, {}, std::chrono::seconds(10));
        INFO(args.front() << ": " << r.err << r.out);
        CHECK(WIFEXITED(r.status));
        CHECK(WEXITSTATUS(r.status) != 0);
        CHECK_FALSE((r.err + r.out).empty());
    }
}

TEST_CASE("pagerd reads the same options from --config", "[cli][config]")
{
    TempDir dir;
    const std::string sock = dir.file("from-config.sock");
    std::ofstream(dir.file("pagerd.toml")) << "socket = \"" << sock << "\"\nworkers = 3\nmax-clients = 7\n";
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::execl(PAGERD_BINARY, PAGERD_BINARY, "--config", dir.file("pagerd.toml").c_str(), nullptr);
        _exit(127);
    }
    auto conn = connect_within(sock);
    REQUIRE(conn);
    auto s = conn->status();
    REQUIRE(s.ok());
    CHECK(s->workers == 3);
    conn.reset();
    ::kill(pid, SIGTERM);
    int st;
    ::waitpid(pid, &st, 0);
    CHECK(exited_with(st, 0));
}

TEST_CASE("a misspelt key in the config file is an error, not silently ignored", "[cli][config]")
{
    TempDir dir;
    std::ofstream(dir.file("pagerd.toml")) << "max-clientz = 3\n";
    auto r = run_command({PAGERD_BINARY, "--config", dir.file("pagerd.toml"), "--socket", dir.file("s.sock")}, {},
                         std::chrono::seconds(10));
    CHECK(WIFEXITED(r.status));
    CHECK(WEXITSTATUS(r.status) != 0);
    CHECK_THAT(r.err + r.out, Catch::Contains("max-clientz"));
}

TEST_CASE("SIGTERM stops pagerd cleanly and removes its socket", "[cli][stop]")
{
    Daemon d;
    const std::string sock = d.socket();
    auto conn = d.connect();  // a connected client does not keep it from stopping
    const int st = d.stop();
    CHECK(exited_with(st, 0));
    struct stat sb{};
    CHECK(::lstat(sock.c_str(), &sb) != 0);
}

TEST_CASE("a second pagerd on the same socket refuses to start, and a path that is not a socket is left alone", "[cli][socket]")
{
    Daemon first;
    auto second = run_command({PAGERD_BINARY, "--socket", first.socket()}, {}, std::chrono::seconds(10));
    CHECK(exited_with(second.status, 1));
    CHECK_THAT(second.err + second.out, Catch::Contains("another pagerd is already serving"));
    CHECK(first.alive());

    TempDir dir;
    std::ofstream(dir.file("not-a-socket")) << "keep me";
    auto r = run_command({PAGERD_BINARY, "--socket", dir.file("not-a-socket")}, {}, std::chrono::seconds(10));
    CHECK(exited_with(r.status, 1));
    CHECK_THAT(r.err + r.out, Catch::Contains("is not a socket"));
    CHECK(read_file(dir.file("not-a-socket")).size() == 7);
}

TEST_CASE("pagerd takes the socket from $PAGERD_SOCKET when --socket is absent", "[cli][socket]")
{
    TempDir dir;
    const std::string sock = dir.file("env.sock");
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::setenv("PAGERD_SOCKET", sock.c_str(), 1);
        ::execl(PAGERD_BINARY, PAGERD_BINARY, nullptr);
        _exit(127);
    }
    const bool connected = connect_within(sock) != nullptr;
    CHECK(connected);
    ::kill(pid, SIGTERM);
    int st;
    ::waitpid(pid, &st, 0);
    CHECK(exited_with(st, 0));
}

TEST_CASE("stale socket of a killed daemon is replaced by the next one", "[cli][socket]")
{
    TempDir dir;
    const std::string sock = dir.file("stale.sock");
    for (int round = 0; round < 2; ++round) {
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::execl(PAGERD_BINARY, PAGERD_BINARY, "--socket", sock.c_str(), nullptr);
            _exit(127);
        }
        const bool connected = connect_within(sock) != nullptr;
        CHECK(connected);
        ::kill(pid, SIGKILL);  // leaves the socket file behind
        ::waitpid(pid, nullptr, 0);
        struct stat sb{};
        CHECK(::lstat(sock.c_str(), &sb) == 0);
    }
}
