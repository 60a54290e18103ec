// Invariant checks that stay on in the default (Release) build. `assert` compiles away
// under NDEBUG, so an invariant broken on a user's machine went unnoticed; a failed
// PNMKV_CHECK names the invariant, where it is, and the values involved, then aborts.
//
//   PNMKV_CHECK(n_pages >= 1, "n_pages=", n_pages);
//   PNMKV_CHECK_EQ(d % step, 0u);          // prints both sides
//   PNMKV_DCHECK(i < n);                     // inner loops only: off under NDEBUG
//
// Use CHECK outside inner loops (per call, per message, per step); use DCHECK inside loops
// that run per element. Errors a caller can cause (bad config, bad message) are values
// (core/status.hpp), never checks: a check is for what the code itself guarantees.
#pragma once

#include <sstream>
#include <type_traits>
#include <string>

namespace pnmkv::detail {

[[noreturn]] void check_failed(const char* condition, const char* file, int line,
                               const std::string& values);

inline void check_append(std::ostringstream&) {}
template <class T, class... Rest>
void check_append(std::ostringstream& os, const T& first, const Rest&... rest) {
  if constexpr (std::is_same_v<T, unsigned char> || std::is_same_v<T, signed char>) {
    os << static_cast<int>(first);
  } else {
    os << first;
  }
  check_append(os, rest...);
}

template <class... Args>
std::string check_message(const Args&... args) {
  std::ostringstream os;
  check_append(os, args...);
  return os.str();
}

}  // namespace pnmkv::detail

#define PNMKV_CHECK(cond, ...)                                                     \
  do {                                                                             \
    if (__builtin_expect(!(cond), 0)) {                                            \
      ::pnmkv::detail::check_failed(#cond, __FILE__, __LINE__,                     \
                                    ::pnmkv::detail::check_message(__VA_ARGS__));  \
    }                                                                              \
  } while (0)

#define PNMKV_CHECK_OP_(a, b, op)                                                        \
  do {                                                                                   \
    const auto& pnmkv_check_a_ = (a);                                                    \
    const auto& pnmkv_check_b_ = (b);                                                    \
    if (__builtin_expect(!(pnmkv_check_a_ op pnmkv_check_b_), 0)) {                      \
      ::pnmkv::detail::check_failed(                                                     \
          #a " " #op " " #b, __FILE__, __LINE__,                                         \
          ::pnmkv::detail::check_message(#a "=", pnmkv_check_a_, ", " #b "=", pnmkv_check_b_)); \
    }                                                                                    \
  } while (0)

#define PNMKV_CHECK_EQ(a, b) PNMKV_CHECK_OP_(a, b, ==)
#define PNMKV_CHECK_NE(a, b) PNMKV_CHECK_OP_(a, b, !=)
#define PNMKV_CHECK_LT(a, b) PNMKV_CHECK_OP_(a, b, <)
#define PNMKV_CHECK_LE(a, b) PNMKV_CHECK_OP_(a, b, <=)
#define PNMKV_CHECK_GT(a, b) PNMKV_CHECK_OP_(a, b, >)
#define PNMKV_CHECK_GE(a, b) PNMKV_CHECK_OP_(a, b, >=)

#ifdef NDEBUG
#define PNMKV_DCHECK(cond, ...) \
  do {                          \
    (void)sizeof(!(cond));      \
  } while (0)
#else
#define PNMKV_DCHECK(cond, ...) PNMKV_CHECK(cond, __VA_ARGS__)
#endif
