// A stand-in for pagerd on a socket, answering as a test tells it: for the answers the real
// daemon never gives this library (an older daemon's UNKNOWN_TYPE, a reply that makes no
// sense, no reply at all). It speaks the real protocol through proto's codec.
#pragma once
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "pagerd/proto/codec.hpp"
#include "pagerd/proto/wire.hpp"
#include "pagerd/util/unique_fd.hpp"

namespace pagerd::test {

class FakeDaemon {
public:
    // The bytes to send back for a request (reply() for a well-formed one), or nothing.
    using Answer = std::function<std::optional<std::vector<std::uint8_t>>(const proto::Message&)>;

    static std::vector<std::uint8_t> reply(std::uint32_t request_id, proto::Body body)
    {
        return proto::encode(proto::Message{request_id, std::move(body)});
    }

    // Listens on `path`. HELLO gets a WELCOME with every capability and REGISTER_UFFD an OK,
    // as from pagerd; every other request goes to `answer`.
    FakeDaemon(const std::string& path, Answer answer) : m_answer(std::move(answer))
    {
        m_listen.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
        m_ok = m_listen && ::bind(m_listen.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
               ::listen(m_listen.get(), 8) == 0;
        if (m_ok) m_thread = std::thread([this] { serve(); });
    }
    ~FakeDaemon()
    {
        m_stop = true;
        if (m_thread.joinable()) m_thread.join();
    }
    FakeDaemon(const FakeDaemon&) = delete;
    FakeDaemon& operator=(const FakeDaemon&) = delete;

    bool listening() const { return m_ok; }
    int requests() const { return m_requests.load(); }  // handed to `answer` so far

private:
    void serve()
    {
        std::vector<util::UniqueFd> clients;
        while (!m_stop) {
            std::vector<pollfd> p{{m_listen.get(), POLLIN, 0}};
            for (const auto& c : clients) p.push_back({c.get(), POLLIN, 0});
            for (const auto& u : m_uffds) p.push_back({u.get(), POLLIN, 0});
            if (::poll(p.data(), p.size(), 20) <= 0) continue;
            // Events of the clients' userfaultfds (munmap of a region waits until its
            // UFFD_EVENT_UNMAP is read): read and let go. Nothing here ever faults.
            for (std::size_t i = 1 + clients.size(); i < p.size(); ++i) {
                char msgs[32 * 32];
                if (p[i].revents & POLLIN) (void)!::read(p[i].fd, msgs, sizeof msgs);
            }
            for (std::size_t i = clients.size(); i >= 1; --i) {
                if (!p[i].revents) continue;
                if (!handle(clients[i - 1].get())) clients.erase(clients.begin() + static_cast<long>(i - 1));
            }
            if (p[0].revents & POLLIN) {
                util::UniqueFd c(::accept4(m_listen.get(), nullptr, nullptr, SOCK_CLOEXEC));
                if (c) clients.push_back(std::move(c));
            }
        }
    }

    // False once the client is gone.
    bool handle(int sock)
    {
        auto got = proto::receive(sock, MSG_DONTWAIT);
        if (!got) return got.error().is_errno(EAGAIN);
        if (got->closed) return false;
        auto msg = proto::decode(got->bytes, got->fds.size());
        if (!msg) return true;
        std::optional<std::vector<std::uint8_t>> out;
        if (std::holds_alternative<proto::Hello>(msg->body)) {
            using namespace proto::cap;
            const std::uint64_t caps = FILE_STORE | PRIVATE_WRITABLE | UFFD_EVENTS | STATUS | SIGBUS_PAST_EOF |
                                       SHARED_WRITABLE | PREFETCH;
            out = reply(msg->request_id, proto::Welcome{caps, 4096, 1024, std::uint64_t{1} << 40, "fake"});
        } else if (std::holds_alternative<proto::RegisterUffd>(msg->body) && got->fds.size() == 1) {
            m_uffds.push_back(std::move(got->fds[0]));
            out = reply(msg->request_id, proto::Ok{});
        } else {
            ++m_requests;
            out = m_answer(*msg);
        }
        if (out) (void)::send(sock, out->data(), out->size(), MSG_NOSIGNAL);
        return true;
    }

    Answer m_answer;
    util::UniqueFd m_listen;
    std::vector<util::UniqueFd> m_uffds;  // of every client so far (the serving thread's)
    bool m_ok = false;
    std::atomic<bool> m_stop{false};
    std::atomic<int> m_requests{0};
    std::thread m_thread;
};

}  // namespace pagerd::test
