#include "preload_helpers.hpp"

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <thread>

namespace pagerd::test::preload {

std::string pagerd_run() { return PAGERD_RUN; }
std::string mapper() { return MAPPER; }

std::vector<std::string> under(const std::string& socket, const std::vector<std::string>& options,
                               const std::vector<std::string>& argv)
{
    std::vector<std::string> all{pagerd_run(), "--socket", socket, "--debug"};
    all.insert(all.end(), options.begin(), options.end());
    all.push_back("--");
    all.insert(all.end(), argv.begin(), argv.end());
    return all;
}

std::vector<std::string> mapper_with(const std::vector<std::string>& steps)
{
    std::vector<std::string> all{mapper()};
    all.insert(all.end(), steps.begin(), steps.end());
    return all;
}

std::uint64_t byte_sum(const std::string& path, std::uint64_t offset, std::uint64_t length)
{
    const auto bytes = read_file(path);
    std::uint64_t sum = 0;
    for (std::uint64_t i = offset; i < bytes.size() && i - offset < length; ++i) sum += bytes[i];
    return sum;
}

std::vector<std::string> decisions(const std::string& err, const std::string& path)
{
    std::vector<std::string> out;
    std::istringstream in(err);
    const std::string prefix = "pagerd-preload: " + path + ": ";
    for (std::string line; std::getline(in, line);)
        if (line.rfind(prefix, 0) == 0) out.push_back(line.substr(prefix.size()));
    return out;
}

bool taken(const std::string& err, const std::string& path)
{
    for (const auto& d : decisions(err, path))
        if (d == "taken") return true;
    return false;
}

std::string fallback_reason(const std::string& err, const std::string& path)
{
    for (const auto& d : decisions(err, path))
        if (d.rfind("fell back: ", 0) == 0) return d.substr(11);
    return "";
}

std::size_t regions_of(libclient::Connection& conn, pid_t pid)
{
    auto all = conn.regions();
    REQUIRE(all.ok());
    std::size_t n = 0;
    for (const auto& r : all.value()) n += r.pid == static_cast<std::uint32_t>(pid);
    return n;
}

Interactive::Interactive(const std::vector<std::string>& argv, const std::vector<std::string>& env)
{
    int in[2], out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    const std::string err = m_dir.file("err");
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
        const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(in[0], 0);
        ::dup2(out[1], 1);
        ::dup2(e, 2);
        for (const auto& kv : env) ::putenv(const_cast<char*>(kv.c_str()));
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        _exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    m_in = in[1];
    m_out = out[0];
}

Interactive::~Interactive()
{
    if (m_in >= 0) ::close(m_in);
    if (m_out >= 0) ::close(m_out);
    if (m_pid > 0) {
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, nullptr, 0);
    }
}

std::string Interactive::until_wait()
{
    std::string got;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (got.size() < 5 || got.compare(got.size() - 5, 5, "wait\n") != 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{m_out, POLLIN, 0};
        REQUIRE(left.count() > 0);
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
        char buf[4096];
        const ssize_t n = ::read(m_out, buf, sizeof buf);
        INFO("output so far: " << got << "\nstderr: " << slurp(m_dir.file("err")));
        REQUIRE(n > 0);
        got.append(buf, static_cast<std::size_t>(n));
    }
    m_all += got;
    return got;
}

void Interactive::resume() { REQUIRE(::write(m_in, "\n", 1) == 1); }

CommandResult Interactive::finish()
{
    ::close(m_in);
    m_in = -1;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{m_out, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
        char buf[4096];
        const ssize_t n = ::read(m_out, buf, sizeof buf);
        if (n <= 0) break;
        m_all.append(buf, static_cast<std::size_t>(n));
    }
    CommandResult r;
    r.status = wait_child(m_pid, std::chrono::seconds(30));
    m_pid = -1;
    r.out = m_all;
    r.err = slurp(m_dir.file("err"));
    return r;
}

}  // namespace pagerd::test::preload
