// Control-plane messages round-trip, and malformed bytes are refused without a crash.
#include <gtest/gtest.h>

#include <random>

#include "actors/control.hpp"

namespace pnmkv::control {
namespace {

TEST(control, every_kind_round_trips) {
  std::vector<control_message> msgs = {
      {1, hello_msg{7, 1}},
      {2, submit_msg{{42, 1 << 20, 16}}},
      {0, admission_msg{42, false, "does not fit"}},
      {3, placement_ack_msg{3, 42, true, ""}},
      {0, run_start_msg{{{1, 100, 2}, {2, 200, 3}}}},
      {1, run_result_msg{"{\"a\":1}", true, ""}},
      {0, shutdown_msg{}},
      {1, progress_msg{"decode", 3, 16}},
      {0, member_down_msg{101, "remote_link_unreachable"}},
  };
  for (const auto& m : msgs) {
    auto d = decode(encode(m));
    ASSERT_TRUE(d) << d.error().to_string();
    EXPECT_EQ(d->sender, m.sender);
    EXPECT_EQ(d->body.index(), m.body.index());
    EXPECT_EQ(encode(*d), encode(m)) << "re-encoding gives the same bytes";
  }
}

TEST(control, malformed_bytes_are_refused) {
  EXPECT_FALSE(decode(""));
  EXPECT_FALSE(decode("abc"));
  EXPECT_FALSE(decode(std::string(max_control_bytes + 8, '\0')));
  std::string good = encode({2, submit_msg{{42, 1 << 20, 16}}});
  std::mt19937_64 rng(11);
  for (int i = 0; i < 5000; ++i) {
    std::string b = good;
    int flips = 1 + rng() % 8;
    for (int f = 0; f < flips; ++f) b[rng() % b.size()] ^= char(1u << (rng() % 8));
    if (rng() % 4 == 0) b.resize(rng() % b.size() / 8 * 8);
    (void)decode(b);  // must not crash; an error or a (different) valid message
  }
}

}  // namespace
}  // namespace pnmkv::control
