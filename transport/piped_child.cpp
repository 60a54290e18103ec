#include "transport/piped_child.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace pnmkv::transport {

namespace {
using clk = std::chrono::steady_clock;

long long ms_since(clk::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count();
}
}  // namespace

std::string text_tail(std::string_view text, size_t bytes_max, size_t lines_max) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  if (lines_max == 0) return "";
  size_t start = text.size(), lines = 0;
  while (start > 0) {
    const size_t nl = text.rfind('\n', start - 1);
    if (nl == std::string_view::npos) {
      start = 0;
      break;
    }
    if (++lines == lines_max) {
      start = nl + 1;
      break;
    }
    start = nl;
  }
  const std::string_view tail = text.substr(start);
  if (tail.size() <= bytes_max) return std::string(tail);
  return "..." + std::string(tail.substr(tail.size() - bytes_max));
}

std::string file_tail(const std::string& path, size_t bytes_max, size_t lines_max) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(std::max<std::streamoff>(0, in.tellg()));
  const size_t take = std::min(size, bytes_max);
  in.seekg(static_cast<std::streamoff>(size - take));
  std::string text(take, '\0');
  in.read(text.data(), static_cast<std::streamsize>(take));
  text.resize(static_cast<size_t>(in.gcount()));
  return text_tail(text, bytes_max, lines_max);
}

piped_child::piped_child(const std::vector<std::string>& argv, const options& opts)
    : echo_stderr_(opts.echo_stderr) {
  if (argv.empty()) throw std::runtime_error("piped_child: empty argv");
  name_ = argv[0];
  // Everything the child needs is prepared before fork: it only calls async-signal-safe
  // functions (and setenv) between fork and exec.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int fds[4][2];  // stdin, stdout, stderr, stop
  int made = 0;
  for (; made < 4; ++made)
    if (pipe2(fds[made], O_CLOEXEC)) break;
  if (made < 4) {
    for (int i = 0; i < made; ++i) {
      close(fds[i][0]);
      close(fds[i][1]);
    }
    throw std::runtime_error("piped_child: pipe2 failed");
  }
  const int devnull = opts.output_to_null ? open("/dev/null", O_WRONLY | O_CLOEXEC) : -1;
  pid_ = fork();
  if (pid_ < 0) {
    for (auto& f : fds) {
      close(f[0]);
      close(f[1]);
    }
    if (devnull >= 0) close(devnull);
    throw std::runtime_error("piped_child: fork failed");
  }
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);  // its own group, so kill_now() also reaches what it started (a shell's children)
    dup2(fds[0][0], 0);
    dup2(devnull >= 0 ? devnull : fds[1][1], 1);
    dup2(fds[2][1], 2);
    for (const auto& [k, v] : opts.env) setenv(k.c_str(), v.c_str(), 1);
    execvp(args[0], args.data());
    _exit(127);
  }
  if (devnull >= 0) close(devnull);
  close(fds[0][0]);
  close(fds[1][1]);
  close(fds[2][1]);
  to_ = fds[0][1];
  from_ = fds[1][0];
  err_ = fds[2][0];
  stop_[0] = fds[3][0];
  stop_[1] = fds[3][1];
  drain_ = std::thread([this] { drain_stderr(); });
}

piped_child::~piped_child() {
  kill_now();
  const char stop = 1;
  (void)!::write(stop_[1], &stop, 1);
  if (drain_.joinable()) drain_.join();
  for (int fd : {to_, from_, err_, stop_[0], stop_[1]}) close(fd);
}

void piped_child::drain_stderr() {
  struct done_flag {
    std::atomic<bool>& f;
    ~done_flag() { f.store(true); }
  } done{drain_done_};
  char tmp[4096];
  for (;;) {
    pollfd p[2] = {{err_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents) return;
    const ssize_t n = ::read(err_, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the child (and all it started) closed its stderr
    if (echo_stderr_) (void)!::write(STDERR_FILENO, tmp, static_cast<size_t>(n));
    std::lock_guard<std::mutex> lock(err_mu_);
    err_tail_.append(tmp, static_cast<size_t>(n));
    if (err_tail_.size() > 2 * stderr_tail_bytes_max)
      err_tail_.erase(0, err_tail_.size() - stderr_tail_bytes_max);
  }
}

std::string piped_child::stderr_tail() const {
  std::lock_guard<std::mutex> lock(err_mu_);
  return text_tail(err_tail_, stderr_tail_bytes_max, stderr_tail_lines_max);
}

result<std::string> piped_child::await_line(const std::string& prefix, std::chrono::milliseconds timeout) {
  const auto t0 = clk::now();
  const auto until = t0 + timeout;
  std::string last;  // the last line it printed that was not the one awaited
  bool closed = false;
  for (;;) {
    const auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (line.rfind(prefix, 0) == 0) return line;
      last = std::move(line);
      continue;
    }
    const fill r = fill_until(until);
    if (r == fill::timed_out) break;
    if (r == fill::closed) {
      closed = true;
      break;
    }
  }
  const long long waited_ms = ms_since(t0);
  // Exited on its own, or killed here: either way reaped, and its exit said.
  std::string how;
  int st = 0;
  for (int i = 0; closed && pid_ > 0 && i < 50; ++i) {  // output closed: it is likely exiting
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      settle_stderr();
      how = WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                            : "exited with status " + std::to_string(WEXITSTATUS(st));
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (how.empty()) {
    kill_now();
    how = "killed after waiting";
  }
  if (!buf_.empty()) last = buf_;
  std::string msg = name_ + " printed no '" + prefix + "' line" + (closed ? " before closing its output" : "") +
                    " in " + std::to_string(waited_ms) + " ms (start-up deadline " +
                    std::to_string(timeout.count()) + " ms; " + how + ")";
  if (!last.empty()) msg += "; its last output line: '" + last + "'";
  const std::string tail = stderr_tail();
  msg += tail.empty() ? "; it wrote nothing on stderr" : "; the end of its stderr:\n" + tail;
  return status{closed ? errc::peer_down : errc::timeout, msg};
}

// Waits until `until` for output and appends what comes to buf_.
piped_child::fill piped_child::fill_until(std::chrono::steady_clock::time_point until) {
  for (;;) {
    // Rounded up: truncated, the last fraction of a millisecond read as 0 and the wait
    // ended just before its deadline (a test caught 1499.9 ms for a 1500 ms deadline).
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - clk::now()).count();
    if (left <= 0) return fill::timed_out;
    pollfd p{from_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char tmp[4096];
    const ssize_t n = ::read(from_, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fill::closed;
    buf_.append(tmp, static_cast<size_t>(n));
    return fill::appended;
  }
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
    if (fill_until(until) != fill::appended) return "";
  }
}

std::string piped_child::read_all(std::chrono::milliseconds timeout) {
  const auto until = clk::now() + timeout;
  while (fill_until(until) == fill::appended) {
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
      settle_stderr();
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

void piped_child::kill_now() {
  if (pid_ <= 0) return;
  ::kill(-pid_, SIGKILL);  // its group: what it started goes too, and lets go of the pipes
  ::kill(pid_, SIGKILL);   // in case it had not reached setpgid yet
  int st = 0;
  waitpid(pid_, &st, 0);
  pid_ = -1;
  settle_stderr();
}

void piped_child::settle_stderr() {
  // What it wrote before it died may still be in the pipe: give the drain thread a moment
  // to reach the end (every writer is gone once the process group is dead), so that
  // stderr_tail() has its last words. Bounded: something it started elsewhere may hold on.
  for (int i = 0; i < 100 && !drain_done_.load(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
}

}  // namespace pnmkv::transport
