// Errors as values: Result<T> holds either a T or an Error (domain + code + message).
// Used across libclient's C++ API, inside proto's decoder and by the daemon; never throws.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace pagerd {

// The numbering Error::code is in. The numbers of different domains overlap (errno 2 is
// ENOENT, proto::ErrorCode 2 is UNKNOWN_TYPE; 9 is EBADF and NO_SUCH_REGION), so a code
// means nothing without its domain: compare with is_errno() / is_daemon() / is_protocol().
enum class ErrorDomain : std::uint8_t {
    System = 1,    // code is an errno value: a system call failed, or a local check refused
                   // the arguments with the errno a system call would have given
    Daemon = 2,    // code is a proto::ErrorCode: the daemon refused the request (its ERROR
                   // reply, proto/PROTOCOL.md), or its WELCOME lacks a required capability
    Protocol = 3,  // code is a proto::ErrorCode naming what is wrong with a message received:
                   // undecodable (MALFORMED, UNKNOWN_TYPE, BAD_DESCRIPTOR as the decoder
                   // found it), or a reply that does not answer the request (MALFORMED)
};

constexpr const char* error_domain_name(ErrorDomain d)
{
    switch (d) {
    case ErrorDomain::System: return "system";
    case ErrorDomain::Daemon: return "daemon";
    case ErrorDomain::Protocol: return "protocol";
    }
    return "?";
}

struct Error {
    ErrorDomain domain = ErrorDomain::System;
    int code = 0;          // in the numbering of `domain`
    std::string message;   // human-readable, complete sentence fragment without trailing newline

    Error() = default;
    Error(ErrorDomain d, int c, std::string text) : domain(d), code(c), message(std::move(text)) {}

    static Error system(int errno_value, std::string text)
    {
        return Error(ErrorDomain::System, errno_value, std::move(text));
    }
    // `code`: proto::ErrorCode (or libclient::DaemonError): an enumerator, never a bare int.
    template <class Code>
        requires std::is_enum_v<Code>
    static Error daemon(Code code, std::string text)
    {
        return Error(ErrorDomain::Daemon, static_cast<int>(code), std::move(text));
    }
    template <class Code>
        requires std::is_enum_v<Code>
    static Error protocol(Code code, std::string text)
    {
        return Error(ErrorDomain::Protocol, static_cast<int>(code), std::move(text));
    }

    bool is_errno(int errno_value) const noexcept { return domain == ErrorDomain::System && code == errno_value; }
    bool is_daemon() const noexcept { return domain == ErrorDomain::Daemon; }
    template <class Code>
        requires std::is_enum_v<Code>
    bool is_daemon(Code c) const noexcept
    {
        return domain == ErrorDomain::Daemon && code == static_cast<int>(c);
    }
    bool is_protocol() const noexcept { return domain == ErrorDomain::Protocol; }
    template <class Code>
        requires std::is_enum_v<Code>
    bool is_protocol(Code c) const noexcept
    {
        return domain == ErrorDomain::Protocol && code == static_cast<int>(c);
    }
};

template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : m_v(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : m_v(std::in_place_index<1>, std::move(error)) {}

    bool ok() const noexcept { return m_v.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    T& value() & { return std::get<0>(m_v); }
    const T& value() const& { return std::get<0>(m_v); }
    T&& value() && { return std::get<0>(std::move(m_v)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const Error& error() const& { return std::get<1>(m_v); }

private:
    std::variant<T, Error> m_v;
};

template <>
class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : m_error(std::move(error)), m_ok(false) {}
    bool ok() const noexcept { return m_ok; }
    explicit operator bool() const noexcept { return m_ok; }
    const Error& error() const& { return m_error; }

private:
    Error m_error;
    bool m_ok = true;
};

}  // namespace pagerd
