// piped_child's start-up deadline. Properties: a child that never prints its ready line fails
// within the deadline (not the minutes it would stay silent), is killed and reaped, and the
// error carries what it wrote on stderr and how long it waited; a child that writes far more
// on stderr than a pipe holds before its ready line is never blocked (no deadlock); a child
// that exits early is reported with its exit status. Real processes (/bin/sh), short deadlines.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include "transport/piped_child.hpp"

namespace pnmkv::transport {
namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

piped_child::options quiet() {
  piped_child::options o;
  o.echo_stderr = false;
  return o;
}

TEST(piped_child, a_silent_child_fails_within_its_deadline_with_its_stderr) {
  piped_child c({"sh", "-c", "echo some diagnostics >&2; echo not the ready line; sleep 60"}, quiet());
  const pid_t pid = c.pid();
  const auto t0 = clk::now();
  auto line = c.await_line("ADDR ", 1500ms);
  const auto waited = clk::now() - t0;
  ASSERT_FALSE(line) << "got '" << *line << "'";
  EXPECT_EQ(line.error().code(), errc::timeout);
  const std::string msg = line.error().message();
  EXPECT_NE(msg.find("some diagnostics"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not the ready line"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1500 ms"), std::string::npos) << msg;
  EXPECT_GE(waited, 1500ms);
  EXPECT_LT(waited, 5s) << "the deadline was not kept";
  // Killed and reaped, with the sleep it started (its process group).
  EXPECT_EQ(c.pid(), -1);
  EXPECT_NE(::kill(pid, 0), 0) << "the child is still there";
  // What it started was killed too; its new parent reaps it a moment later.
  bool group_gone = false;
  for (int i = 0; i < 200 && !group_gone; ++i) {
    group_gone = ::kill(-pid, 0) != 0;
    if (!group_gone) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(group_gone) << "what the child started is still there";
}

TEST(piped_child, megabytes_on_stderr_before_the_ready_line_do_not_block_the_child) {
  // 2 MiB of diagnostics: 32 times what a pipe holds. Undrained, the child would block in
  // its write and never print the line.
  piped_child c({"sh", "-c", "head -c 2097152 /dev/zero | tr '\\0' 'w' >&2; echo >&2 last words; echo ADDR 1234"},
                quiet());
  auto line = c.await_line("ADDR ", 20s);
  ASSERT_TRUE(line) << line.error().to_string();
  EXPECT_EQ(*line, "ADDR 1234");
  EXPECT_EQ(c.wait_exit(10s), 0);
  // Only the tail is kept, bounded.
  const std::string tail = c.stderr_tail();
  EXPECT_LE(tail.size(), piped_child::stderr_tail_bytes_max + 3);
  EXPECT_NE(tail.find("last words"), std::string::npos);
}

TEST(piped_child, a_child_that_exits_before_its_ready_line_is_reported_at_once) {
  piped_child c({"sh", "-c", "echo cannot open the device >&2; exit 3"}, quiet());
  const auto t0 = clk::now();
  auto line = c.await_line("ADDR ", 20s);
  ASSERT_FALSE(line);
  EXPECT_LT(clk::now() - t0, 10s) << "waited out the deadline for a child already gone";
  EXPECT_EQ(line.error().code(), errc::peer_down);
  const std::string msg = line.error().message();
  EXPECT_NE(msg.find("exited with status 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot open the device"), std::string::npos) << msg;
}

TEST(piped_child, text_tail_keeps_the_last_lines_within_the_byte_limit) {
  EXPECT_EQ(text_tail("a\nb\nc\n", 100, 2), "b\nc");
  EXPECT_EQ(text_tail("a\nb\nc", 100, 5), "a\nb\nc");
  EXPECT_EQ(text_tail("abcdef", 3, 5), "...def");
  EXPECT_EQ(text_tail("", 3, 5), "");
  EXPECT_EQ(text_tail("x\n", 10, 0), "");
}

}  // namespace
}  // namespace pnmkv::transport
