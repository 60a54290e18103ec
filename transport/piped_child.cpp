#include "transport/piped_child.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace pnmkv::transport {

namespace {
using clk = std::chrono::steady_clock;
}

piped_child::piped_child(const std::vector<std::string>& argv, const options& opts) {
  if (argv.empty()) throw std::runtime_error("piped_child: empty argv");
  // Everything the child needs is prepared before fork: it only calls async-signal-safe
  // functions (and setenv) between fork and exec.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC)) throw std::runtime_error("piped_child: pipe2 failed");
  if (pipe2(out, O_CLOEXEC)) {
    close(in[0]);
    close(in[1]);
    throw std::runtime_error("piped_child: pipe2 failed");
  }
  const int devnull = opts.output_to_null ? open("/dev/null", O_WRONLY | O_CLOEXEC) : -1;
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("piped_child: fork failed");
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(in[0], 0);
    if (devnull >= 0) {
      dup2(devnull, 1);
      dup2(devnull, 2);
    } else {
      dup2(out[1], 1);
    }
    for (const auto& [k, v] : opts.env) setenv(k.c_str(), v.c_str(), 1);
    execvp(args[0], args.data());
    _exit(127);
  }
  if (devnull >= 0) close(devnull);
  close(in[0]);
  close(out[1]);
  to_ = in[1];
  from_ = out[0];
}

piped_child::~piped_child() {
  kill_now();
  close(to_);
  close(from_);
}

std::string piped_child::read_line(std::chrono::milliseconds timeout) {
  const auto until = clk::now() + timeout;
  for (;;) {
    const auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clk::now()).count();
    if (left <= 0) return "";
    pollfd p{from_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char tmp[4096];
    const ssize_t n = ::read(from_, tmp, sizeof tmp);
    if (n <= 0) return "";
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

std::string piped_child::read_all(std::chrono::milliseconds timeout) {
  const auto until = clk::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clk::now()).count();
    if (left <= 0) break;
    pollfd p{from_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char tmp[4096];
    const ssize_t n = ::read(from_, tmp, sizeof tmp);
    if (n <= 0) break;
    buf_.append(tmp, static_cast<size_t>(n));
  }
  std::string all;
  all.swap(buf_);
  return all;
}

bool piped_child::write_line(const std::string& line) {
  const std::string l = line + "\n";
  return ::write(to_, l.data(), l.size()) == static_cast<ssize_t>(l.size());
}

int piped_child::wait_exit(std::chrono::milliseconds timeout) {
  const auto until = clk::now() + timeout;
  while (pid_ > 0 && clk::now() < until) {
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

void piped_child::kill_now() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int st = 0;
  waitpid(pid_, &st, 0);
  pid_ = -1;
}

}  // namespace pnmkv::transport
