#include "pagerd/proto/constants.hpp"

namespace pagerd::proto {

const char* type_name(Type t)
{
    switch (t) {
#define PAGERD_X(name, value, fds) \
    case Type::name: return #name;
        PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
    }
    return "?";
}

const char* error_code_name(ErrorCode c)
{
    switch (c) {
#define PAGERD_X(name, value) \
    case ErrorCode::name: return #name;
        PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X
    }
    return "?";
}

const char* capability_name(unsigned bit)
{
    switch (bit) {
#define PAGERD_X(name, b) \
    case b: return #name;
        PAGERD_CAPABILITIES(PAGERD_X)
#undef PAGERD_X
    }
    return nullptr;
}

std::size_t fds_expected(Type t)
{
    switch (t) {
#define PAGERD_X(name, value, fds) \
    case Type::name: return fds;
        PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
    }
    return 0;
}

}  // namespace pagerd::proto
