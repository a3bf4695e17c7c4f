// Errors are values: every fallible function returns Result<T> = std::expected<T, Error>.
// TRY(expr) unwraps a Result or returns its error from the enclosing function, keeping the happy path flat.
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <string>
#include <utility>

namespace sandlot {

struct Error {
    int code = 0;         // errno value where one applies, else 0
    std::string message;  // what was being done, e.g. "open /x/vmlinux"

    // "open /x/vmlinux: No such file or directory"
    std::string to_string() const {
        if (code == 0) return message;
        return message + ": " + std::strerror(code);
    }
};

template <class T>
using Result = std::expected<T, Error>;

inline std::unexpected<Error> make_error(std::string message, int code = 0) {
    return std::unexpected(Error{code, std::move(message)});
}

// Captures errno at the call site.
inline std::unexpected<Error> errno_error(std::string message) {
    return std::unexpected(Error{errno, std::move(message)});
}

// Prefixes context to an error as it travels up: "loading kernel: open ...".
inline Error with_context(Error e, const std::string& context) {
    e.message = context + ": " + e.message;
    return e;
}

}  // namespace sandlot

// GCC/Clang statement expression: evaluates to the value of a successful Result, or returns its error.
#define TRY(expr)                                                                 \
    ({                                                                            \
        auto&& try_result_ = (expr);                                              \
        if (!try_result_) return std::unexpected(std::move(try_result_).error()); \
        std::move(try_result_).value();                                           \
    })
