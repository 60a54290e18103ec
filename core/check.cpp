// The failure path of PNMKV_CHECK (core/check.hpp): one line on stderr naming the
// invariant, where it is and the values, then abort() so a core dump or a debugger keeps
// the state. Written with one write(2) so lines of concurrent failures do not interleave.
#include "core/check.hpp"

#include <unistd.h>

#include <cstdlib>

namespace pnmkv::detail {

void check_failed(const char* condition, const char* file, int line,
                  const std::string& values) {
  std::string msg = std::string("pnmkv: check failed: ") + condition + " at " + file + ":" +
                    std::to_string(line);
  if (!values.empty()) msg += " (" + values + ")";
  msg += "\n";
  const ssize_t written = ::write(STDERR_FILENO, msg.data(), msg.size());
  (void)written;
  std::abort();
}

}  // namespace pnmkv::detail
