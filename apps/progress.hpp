// One line of progress on stderr for anything that runs longer than a few seconds: a bar
// with elapsed time and an estimate of what is left when stderr is a terminal, otherwise a
// line at the start and end of each phase (logs stay readable). Thread-safe.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace pnmkv::apps {

class progress_bar {
 public:
  explicit progress_bar(std::string command, uint64_t total = 1)
      : command_(std::move(command)), total_(std::max<uint64_t>(total, 1)), tty_(isatty(2)) {}

  // One more unit done.
  void advance(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    draw_locked(done_ + 1, total_, what);
  }
  // `done` of `total` in the phase `what` (a new phase restarts the clock's estimate).
  void set(uint64_t done, uint64_t total, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (what != phase_) {
      phase_ = what;
      phase_start_ = std::chrono::steady_clock::now();
      if (!tty_) std::fprintf(stderr, "%s: %s ...\n", command_.c_str(), what.c_str());
    }
    draw_locked(done, total, what);
    if (!tty_ && done >= total)
      std::fprintf(stderr, "%s: %s done (%llu)\n", command_.c_str(), what.c_str(),
                   static_cast<unsigned long long>(total));
  }
  // A line that stays (the bar is redrawn after it).
  void note(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu_);
    if (tty_) std::fprintf(stderr, "\r%-100s\r", "");
    std::fprintf(stderr, "%s: %s\n", command_.c_str(), line.c_str());
  }
  void finish() {
    std::lock_guard<std::mutex> lock(mu_);
    if (tty_) std::fprintf(stderr, "\r%-100s\r", "");
    std::fflush(stderr);
  }

 private:
  void draw_locked(uint64_t done, uint64_t total, const std::string& what) {
    done_ = done;
    total_ = std::max<uint64_t>(total, 1);
    if (!tty_) return;
    const double now = seconds(phase_start_);
    if (done_ < total_ && now - last_draw_s_ < 0.2 && last_draw_s_ >= 0) return;
    last_draw_s_ = now;
    const int width = 30;
    const uint64_t d = std::min(done_, total_);
    const int filled = static_cast<int>(width * d / total_);
    const double eta = d ? now / double(d) * double(total_ - d) : 0;
    std::fprintf(stderr, "\r[%s%s] %3d%% %s  %.0fs elapsed, ~%.0fs left   ",
                 std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(),
                 static_cast<int>(100 * d / total_), what.c_str(), now, eta);
    std::fflush(stderr);
  }
  static double seconds(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  std::mutex mu_;
  std::string command_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool tty_;
  std::string phase_;
  std::chrono::steady_clock::time_point phase_start_ = std::chrono::steady_clock::now();
  double last_draw_s_ = -1;
};

}  // namespace pnmkv::apps
