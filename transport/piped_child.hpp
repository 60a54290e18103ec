// A child process with pipes to its stdin and stdout, for the programs that host a fabric
// peer in another process (the UCX tests, `pnmkv bench fabric`, ucx_perftest runs): it dies
// with its parent (PR_SET_PDEATHSIG) and is killed and reaped on destruction.
//
// No silent start-up hangs: await_line() waits for the child's ready line under a deadline
// and, when none comes, kills the child and says how long it waited and what the child last
// wrote on stderr. The child's stderr is drained by a thread from the start, so a child that
// writes a lot of diagnostics before (or without) anyone reading them never blocks on a full
// pipe; its last lines are kept for error messages.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/status.hpp"

namespace pnmkv::transport {

// The last `lines_max` lines of `text`, at most `bytes_max` bytes of them (the start of a
// cut line is dropped, marked with "..."); trailing newlines removed.
std::string text_tail(std::string_view text, size_t bytes_max, size_t lines_max);
// text_tail of a file's last `bytes_max` bytes; empty when it cannot be read.
std::string file_tail(const std::string& path, size_t bytes_max, size_t lines_max);

class piped_child {
 public:
  // Long enough for a UCX peer or node process to start on a loaded 2-core machine (one
  // starts in ~60-130 ms there with two CPU hogs and other builds running), far below the
  // minutes of silence it replaces.
  static constexpr std::chrono::milliseconds startup_timeout_default{30000};
  static constexpr size_t stderr_tail_bytes_max = 4096;  // kept, and quoted in errors
  static constexpr size_t stderr_tail_lines_max = 20;

  struct options {
    bool output_to_null = false;  // stdout to /dev/null instead of the pipe
    bool echo_stderr = true;      // copy the child's stderr to ours as it arrives
    std::vector<std::pair<std::string, std::string>> env;  // set in the child before exec
  };
  // argv[0] is looked up on PATH. Throws std::runtime_error when the pipes or the fork fail.
  explicit piped_child(const std::vector<std::string>& argv) : piped_child(argv, options{}) {}
  piped_child(const std::vector<std::string>& argv, const options& opts);
  ~piped_child();
  piped_child(const piped_child&) = delete;
  piped_child& operator=(const piped_child&) = delete;

  // The first stdout line that starts with `prefix`, without its newline; other lines
  // (UCX may print warnings on stdout first) are skipped. When none comes within `timeout`
  // or the child closes its output first, the child is killed and reaped and the error
  // (errc::timeout or errc::peer_down) names the program, the time waited, the last line it
  // printed and the tail of its stderr.
  result<std::string> await_line(const std::string& prefix,
                                 std::chrono::milliseconds timeout = startup_timeout_default);
  // One line within `timeout`, without its newline; empty on timeout or end of output.
  std::string read_line(std::chrono::milliseconds timeout);
  // Everything the child prints until it closes its output or `timeout` passes.
  std::string read_all(std::chrono::milliseconds timeout);
  // False when the child's stdin cannot take the whole line.
  bool write_line(const std::string& line);
  // Waits up to `timeout` for the child to exit; its exit status, or -1. Once it has,
  // stderr_tail() holds the end of what it wrote.
  int wait_exit(std::chrono::milliseconds timeout);
  void kill_now();  // SIGKILL to the child's process group, and reap (no-op once gone)
  pid_t pid() const { return pid_; }
  // The last lines the child wrote on stderr (at most stderr_tail_*_max).
  std::string stderr_tail() const;

 private:
  enum class fill { appended, timed_out, closed };
  fill fill_until(std::chrono::steady_clock::time_point until);
  void drain_stderr();
  void settle_stderr();  // after the child is reaped: up to 200 ms for the drain to finish

  std::string name_;  // argv[0], for error messages
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1, err_ = -1;
  int stop_[2] = {-1, -1};  // wakes the drain thread on destruction
  bool echo_stderr_ = true;
  std::string buf_;
  mutable std::mutex err_mu_;
  std::string err_tail_;  // bounded: 2 * stderr_tail_bytes_max
  std::atomic<bool> drain_done_{false};  // the drain thread saw the end of stderr
  std::thread drain_;
};

}  // namespace pnmkv::transport
