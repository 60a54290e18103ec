// A child process with pipes to its stdin and stdout, for the programs that host a fabric
// peer in another process (the UCX tests, `pnmkv bench fabric`, ucx_perftest runs): it dies
// with its parent (PR_SET_PDEATHSIG) and is killed and reaped on destruction.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace pnmkv::transport {

class piped_child {
 public:
  struct options {
    bool output_to_null = false;  // stdout and stderr to /dev/null instead of the pipe
    std::vector<std::pair<std::string, std::string>> env;  // set in the child before exec
  };
  // argv[0] is looked up on PATH. Throws std::runtime_error when the pipes or the fork fail.
  explicit piped_child(const std::vector<std::string>& argv) : piped_child(argv, options{}) {}
  piped_child(const std::vector<std::string>& argv, const options& opts);
  ~piped_child();
  piped_child(const piped_child&) = delete;
  piped_child& operator=(const piped_child&) = delete;

  // One line within `timeout`, without its newline; empty on timeout or end of output.
  std::string read_line(std::chrono::milliseconds timeout);
  // Everything the child prints until it closes its output or `timeout` passes.
  std::string read_all(std::chrono::milliseconds timeout);
  // False when the child's stdin cannot take the whole line.
  bool write_line(const std::string& line);
  // Waits up to `timeout` for the child to exit; its exit status, or -1.
  int wait_exit(std::chrono::milliseconds timeout);
  void kill_now();  // SIGKILL and reap (no-op once gone)
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buf_;
};

}  // namespace pnmkv::transport
