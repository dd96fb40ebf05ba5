// The library's error codes: DaemonError (proto::ErrorCode as the public API names it) and
// the errno each error becomes in the C API and the UMap API.
#include <cerrno>

#include "pagerd/client.hpp"
#include "pagerd/proto/constants.hpp"

namespace pagerd::libclient {

// Every protocol error code has a DaemonError of the same name and value.
#define PAGERD_X(name, value)                                                          \
    static_assert(static_cast<std::uint32_t>(DaemonError::name) == (value) &&          \
                  static_cast<std::uint32_t>(proto::ErrorCode::name) == (value));
PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X

const char* daemon_error_name(DaemonError code) { return proto::error_code_name(static_cast<proto::ErrorCode>(code)); }

int to_errno(const Error& error)
{
    if (error.domain == ErrorDomain::System) return error.code > 0 ? error.code : EIO;
    if (error.domain == ErrorDomain::Protocol) return EPROTO;
    switch (static_cast<DaemonError>(error.code)) {
    case DaemonError::MALFORMED:
    case DaemonError::BAD_RANGE:
    case DaemonError::OVERLAP:
    case DaemonError::PAST_EOF:
    case DaemonError::NO_SUCH_REGION: return EINVAL;
    case DaemonError::BAD_DESCRIPTOR: return EBADF;
    case DaemonError::LIMIT: return ENOMEM;
    case DaemonError::UNKNOWN_TYPE: return ENOSYS;  // a daemon older than this library
    case DaemonError::NOT_READY:
    case DaemonError::CAPABILITY:
    case DaemonError::INTERNAL:
    case DaemonError::TIMEOUT:
    case DaemonError::IO_ERROR: break;
    }
    return EIO;  // and codes added later: the daemon failed
}

}  // namespace pagerd::libclient
