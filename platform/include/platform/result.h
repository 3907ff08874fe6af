// Result<T>: errors are values (the tree builds with -fno-exceptions).
//
// Result<T> is tl::expected<T, Error> made [[nodiscard]]. Only members that
// C++23 std::expected also has are used across the tree (has_value, value,
// error, operator*, operator->, operator bool, and_then, or_else, transform,
// value_or), so moving to std::expected is a one-line change here.
//
//   Result<int> Parse(std::string_view s);
//   Result<void> Apply() {
//     int n = TRY(Parse("12"));
//     TRY_CTX(Write(n), "writing slot B");   // adds context on failure
//     return {};
//   }
#pragma once

#include <tl/expected.hpp>

#include <utility>

#include "platform/error.h"

namespace ralph {

template <typename T>
class [[nodiscard]] Result : public tl::expected<T, Error> {
  using Base = tl::expected<T, Error>;

 public:
  using Base::Base;
  // Returning an Error from a function that returns Result<T> is the common
  // case; allow it without spelling tl::unexpected.
  Result(Error error) : Base(tl::unexpected<Error>(std::move(error))) {}  // NOLINT
  Result(const Base& base) : Base(base) {}                                // NOLINT
  Result(Base&& base) : Base(std::move(base)) {}                          // NOLINT
};

template <>
class [[nodiscard]] Result<void> : public tl::expected<void, Error> {
  using Base = tl::expected<void, Error>;

 public:
  using Base::Base;
  Result() : Base() {}
  Result(Error error) : Base(tl::unexpected<Error>(std::move(error))) {}  // NOLINT
  Result(const Base& base) : Base(base) {}                                // NOLINT
  Result(Base&& base) : Base(std::move(base)) {}                          // NOLINT
};

// Marks a Result as deliberately ignored (best-effort cleanup paths).
template <typename T>
inline void IgnoreError(Result<T>&&) {}

namespace internal {
// What TRY yields: the value, or nothing for Result<void> (tl::expected<void>
// has no value() to call).
template <typename T>
T TakeValue(Result<T>&& result) {
  return *std::move(result);
}
inline void TakeValue(Result<void>&&) {}
}  // namespace internal

}  // namespace ralph

// TRY(expr): evaluates a Result; on error returns the Error from the enclosing
// function, otherwise yields the value. Uses a GNU statement expression, as
// SerenityOS's TRY and systemd's macros do; g++ and clang both support it.
#define TRY(expr)                                               \
  ({                                                            \
    auto _ralph_try_result = (expr);                            \
    if (!_ralph_try_result) [[unlikely]]                        \
      return std::move(_ralph_try_result).error();              \
    ::ralph::internal::TakeValue(std::move(_ralph_try_result)); \
  })

// TRY_CTX(expr, context): as TRY, and prepends "context: " to the error's
// message. `context` is evaluated only on failure (may be a fmt::format call).
#define TRY_CTX(expr, context)                                            \
  ({                                                                      \
    auto _ralph_try_result = (expr);                                      \
    if (!_ralph_try_result) [[unlikely]]                                  \
      return std::move(_ralph_try_result).error().WithContext((context)); \
    ::ralph::internal::TakeValue(std::move(_ralph_try_result));           \
  })
