#include "listener.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

namespace pagerd::daemon {
namespace {

Error sys_error(const std::string& what)
{
    return Error::system(errno, what + ": " + std::strerror(errno));
}

bool someone_listens(const sockaddr_un& addr)
{
    util::UniqueFd probe(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    return probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace

Listener adopt_listener(util::UniqueFd fd)
{
    const int fl = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK);
    sockaddr_un addr{};
    socklen_t len = sizeof addr;
    std::string path = "(passed by systemd)";
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0 && addr.sun_path[0])
        path = addr.sun_path;
    return Listener{std::move(fd), path, false};
}

Result<Listener> open_listener(const std::string& path, unsigned mode)
{
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path)
        return Error::system(ENAMETOOLONG, "socket path '" + path + "' is empty or longer than " +
                                               std::to_string(sizeof addr.sun_path - 1) + " bytes");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

    if (const auto slash = path.rfind('/'); slash != std::string::npos && slash > 0) {
        const std::string dir = path.substr(0, slash);
        if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
            return sys_error("cannot create directory " + dir);
    }
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return Error::system(EEXIST, path + " exists and is not a socket; not touching it");
        if (someone_listens(addr))
            return Error::system(EADDRINUSE, "another pagerd is already serving " + path);
        ::unlink(path.c_str());  // stale socket of a daemon that died
    }
    util::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return sys_error("socket");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        return sys_error("cannot bind " + path);
    if (::chmod(path.c_str(), mode) != 0) return sys_error("chmod " + path);
    if (::listen(fd.get(), 128) != 0) return sys_error("listen on " + path);
    return Listener{std::move(fd), path};
}

}  // namespace pagerd::daemon
