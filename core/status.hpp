// Errors as values at module boundaries. A `status` is ok or carries an error code and a
// human message that names what was wrong and what is allowed; `result<T>` is a value or
// a status. Pure code in core/, model/, schedulers/ returns these; CAF-facing code converts.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "core/check.hpp"

namespace pnmkv {

enum class errc {
  ok = 0,
  invalid_argument,  // a value outside its allowed range or set
  out_of_range,      // an index (page id, head, layer, position) past its bound
  shape_mismatch,    // dimensions that do not agree
  capacity,          // a limit (memory, queue, tokens) would be exceeded
  parse,             // malformed text or bytes
  io,                // file or socket trouble
  unsupported,       // a feature not built in or not available here
  timeout,           // a deadline passed
  peer_down,         // the other side is gone
  internal,          // a broken invariant we could still report
  not_ready,         // depends on something that has not arrived yet: try again later
};

const char* to_string(errc code);

class [[nodiscard]] status {
 public:
  status() = default;
  status(errc code, std::string message) : code_(code), message_(std::move(message)) {
    PNMKV_CHECK(code != errc::ok, "an error status needs an error code; message: ", message_);
  }
  static status ok() { return {}; }

  bool is_ok() const { return code_ == errc::ok; }
  explicit operator bool() const { return is_ok(); }
  errc code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid_argument: selection.budget_tokens = 8 is below ..."
  std::string to_string() const;

 private:
  errc code_ = errc::ok;
  std::string message_;
};

template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  result(status err) : v_(std::move(err)) {
    PNMKV_CHECK(!std::get<status>(v_).is_ok(), "a result built from a status needs an error");
  }
  result(errc code, std::string message) : v_(status{code, std::move(message)}) {}

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  T& value() & { check_ok(); return std::get<T>(v_); }
  const T& value() const& { check_ok(); return std::get<T>(v_); }
  T&& value() && { check_ok(); return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const status& error() const {
    PNMKV_CHECK(!is_ok(), "error() of a result that holds a value");
    return std::get<status>(v_);
  }

 private:
  void check_ok() const {
    PNMKV_CHECK(is_ok(), "value() of a result that holds an error: ",
                std::get<status>(v_).to_string());
  }
  std::variant<T, status> v_;
};

}  // namespace pnmkv
