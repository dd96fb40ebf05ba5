// Errors as values: Result<T> holds either a T or an Error (code + message).
// Used across libclient's C++ API and inside proto's decoder; never throws.
#pragma once
#include <string>
#include <utility>
#include <variant>

namespace pagerd {

struct Error {
    int code = 0;          // errno value, or a pagerd::proto::ErrorCode for daemon errors
    std::string message;   // human-readable, complete sentence fragment without trailing newline
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
