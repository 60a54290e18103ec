// PNMKV_CHECK (core/check.hpp) stays on in the build users run: a failed check aborts with
// one line naming the invariant, the file and line, and the values involved, whether or not
// NDEBUG is defined (the default Release build defines it; `assert` would vanish there).
// Also: a check evaluates its operands once, and PNMKV_DCHECK follows NDEBUG.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "core/check.hpp"
#include "core/kv_store.hpp"
#include "core/status.hpp"

namespace pnmkv {
namespace {

// The death tests fork; "threadsafe" re-executes the binary so no other thread's state
// (gtest's, Highway's) is copied half-way.
class check_death : public ::testing::Test {
 protected:
  void SetUp() override { ::testing::FLAGS_gtest_death_test_style = "threadsafe"; }
};

TEST_F(check_death, names_the_invariant_file_line_and_values) {
  const uint32_t n_pages = 0;
  EXPECT_DEATH(PNMKV_CHECK(n_pages >= 1, "n_pages=", n_pages, ", shard=", 7),
               "pnmkv: check failed: n_pages >= 1 at .*check_test\\.cpp:[0-9]+ "
               "\\(n_pages=0, shard=7\\)");
}

TEST_F(check_death, comparison_checks_print_both_sides) {
  const uint64_t rows = 17, page_size_tokens = 16;
  EXPECT_DEATH(PNMKV_CHECK_LE(rows, page_size_tokens),
               "check failed: rows <= page_size_tokens at .*check_test\\.cpp:[0-9]+ "
               "\\(rows=17, page_size_tokens=16\\)");
  const unsigned char tag = 3;  // printed as a number, not as a control character
  EXPECT_DEATH(PNMKV_CHECK_EQ(tag, 4), "\\(tag=3, 4=4\\)");
}

// The library is compiled like the rest of the project (Release: NDEBUG defined), so this
// shows the checks inside pnmkv_core fire in that build, where an assert would not have.
TEST_F(check_death, fires_inside_the_library_in_this_build) {
#ifdef NDEBUG
  SCOPED_TRACE("NDEBUG is defined: a plain assert() would compile away here");
#endif
  kv_head_shape shape;
  shape.head_dim = 16;
  shape.page_size_tokens = 4;
  auto store = kv_head_store::create(shape, 64);
  ASSERT_TRUE(store.is_ok()) << store.error().to_string();
  ASSERT_EQ(store->page_count(), 0u);
  EXPECT_DEATH((void)store->page_tokens(5),
               "check failed: local_page < page_count\\(\\) at .*core/kv_store\\.cpp:[0-9]+ "
               "\\(local_page=5, page_count\\(\\)=0\\)");
}

TEST_F(check_death, value_of_an_error_result_says_which_error) {
  result<int> r{errc::capacity, "device 101 is full"};
  EXPECT_DEATH((void)r.value(),
               "check failed: is_ok\\(\\) at .*core/status\\.hpp:[0-9]+ .*"
               "capacity: device 101 is full");
}

TEST(check, operands_are_evaluated_once_and_a_passing_check_is_silent) {
  int calls = 0;
  auto next = [&calls] { return ++calls; };
  PNMKV_CHECK_EQ(next(), 1);
  PNMKV_CHECK(next() == 2, "calls=", calls);
  PNMKV_CHECK_GT(next(), 0);
  EXPECT_EQ(calls, 3);
}

TEST(check, dcheck_follows_ndebug) {
#ifdef NDEBUG
  int calls = 0;
  PNMKV_DCHECK(++calls == 100);  // neither evaluated nor fatal
  EXPECT_EQ(calls, 0);
#else
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_DEATH(PNMKV_DCHECK(1 + 1 == 3), "check failed: 1 \\+ 1 == 3");
#endif
}

}  // namespace
}  // namespace pnmkv
