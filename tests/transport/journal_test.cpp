// The journal's framing: what was appended reads back; a crash's torn tail is dropped and
// cut off by the next writer; corruption before the end is refused with its offset.
#include "transport/journal.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

namespace pnmkv::transport {
namespace {

namespace fs = std::filesystem;

class journal_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pnmkv-journal-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "coordinator.journal").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::vector<uint8_t>> write_records(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::vector<uint8_t>> recs;
    auto w = journal_writer::open(path_, 0);
    EXPECT_TRUE(w) << w.error().to_string();
    for (size_t i = 0; i < n; ++i) {
      std::vector<uint8_t> r(1 + rng() % 300);
      for (auto& b : r) b = static_cast<uint8_t>(rng());
      EXPECT_TRUE((*w)->append(r, i % 3 == 0));
      recs.push_back(std::move(r));
    }
    return recs;
  }
  std::vector<uint8_t> file_bytes() {
    std::ifstream in(path_, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void put_bytes(const std::vector<uint8_t>& b) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }

  fs::path dir_;
  std::string path_;
};

TEST_F(journal_test, no_file_is_a_fresh_cluster) {
  auto c = read_journal(path_);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_FALSE(c->existed);
  EXPECT_TRUE(c->records.empty());
}

TEST_F(journal_test, appended_records_read_back_in_order_across_reopens) {
  auto first = write_records(40, 7);
  auto c = read_journal(path_);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->records, first);
  EXPECT_EQ(c->torn_tail_bytes, 0u);
  EXPECT_EQ(c->valid_bytes, fs::file_size(path_));
  // A restarted writer appends after what is there.
  auto w = journal_writer::open(path_, c->valid_bytes);
  ASSERT_TRUE(w);
  std::vector<uint8_t> more{1, 2, 3};
  ASSERT_TRUE((*w)->append(more, true));
  EXPECT_EQ((*w)->syncs(), 1u);
  auto c2 = read_journal(path_);
  ASSERT_TRUE(c2);
  ASSERT_EQ(c2->records.size(), first.size() + 1);
  EXPECT_EQ(c2->records.back(), more);
}

// Every cut of the file (a crash at any byte of any append) reads as a prefix of what was
// appended: whole records before the cut, the rest reported as a torn tail; and a writer
// opened there continues a journal that reads back cleanly.
TEST_F(journal_test, a_cut_anywhere_is_a_torn_tail_and_the_writer_repairs_it) {
  const auto recs = write_records(12, 11);
  const auto full = file_bytes();
  for (size_t cut = journal_header_bytes; cut <= full.size(); ++cut) {
    put_bytes(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(cut)));
    auto c = read_journal(path_);
    ASSERT_TRUE(c) << "cut at " << cut << ": " << c.error().to_string();
    ASSERT_LE(c->records.size(), recs.size());
    for (size_t i = 0; i < c->records.size(); ++i) ASSERT_EQ(c->records[i], recs[i]) << "cut " << cut;
    EXPECT_EQ(c->valid_bytes + c->torn_tail_bytes, cut);
    auto w = journal_writer::open(path_, c->valid_bytes);
    ASSERT_TRUE(w);
    ASSERT_TRUE((*w)->append({9, 9}, false));
    auto again = read_journal(path_);
    ASSERT_TRUE(again) << again.error().to_string();
    EXPECT_EQ(again->torn_tail_bytes, 0u);
    ASSERT_EQ(again->records.size(), c->records.size() + 1);
    EXPECT_EQ(again->records.back(), (std::vector<uint8_t>{9, 9}));
  }
}

TEST_F(journal_test, a_zeroed_tail_is_torn_not_corrupt) {
  const auto recs = write_records(5, 3);
  auto b = file_bytes();
  b.insert(b.end(), 4096, 0);
  put_bytes(b);
  auto c = read_journal(path_);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->records, recs);
  EXPECT_EQ(c->torn_tail_bytes, 4096u);
}

// A flipped bit in any record but the last is corruption: refused, naming the record and
// its offset. In the last it is a torn write.
TEST_F(journal_test, a_flipped_bit_before_the_end_is_refused_with_its_offset) {
  const auto recs = write_records(6, 5);
  const auto full = file_bytes();
  size_t at = journal_header_bytes;
  for (size_t i = 0; i < recs.size(); ++i) {
    auto b = full;
    b[at + 8 + recs[i].size() / 2] ^= 0x10;
    put_bytes(b);
    auto c = read_journal(path_);
    if (i + 1 < recs.size()) {
      ASSERT_FALSE(c) << "record " << i;
      EXPECT_NE(c.error().message().find("record " + std::to_string(i) + " at byte " + std::to_string(at)),
                std::string::npos)
          << c.error().message();
      EXPECT_NE(c.error().message().find("CRC32C"), std::string::npos);
    } else {
      ASSERT_TRUE(c);
      EXPECT_EQ(c->records.size(), recs.size() - 1);
      EXPECT_GT(c->torn_tail_bytes, 0u);
    }
    at += 8 + recs[i].size();
  }
}

TEST_F(journal_test, not_a_journal_or_another_version_is_refused) {
  put_bytes(std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!', '!', '!', '!', '!', '!'});
  auto c = read_journal(path_);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("not a pnmkv journal"), std::string::npos);
  auto h = journal_header();
  h[8] = 7;
  put_bytes(h);
  c = read_journal(path_);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("format version 7"), std::string::npos) << c.error().message();
}

TEST_F(journal_test, records_past_the_limits_are_refused) {
  auto w = journal_writer::open(path_, 0);
  ASSERT_TRUE(w);
  EXPECT_EQ((*w)->append({}, false).code(), errc::capacity);
  EXPECT_EQ((*w)->append(std::vector<uint8_t>(journal_record_bytes_max + 1), false).code(), errc::capacity);
  // A length field past the limit with bytes after it: corruption.
  auto b = journal_header();
  const std::vector<uint8_t> big = {0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 1, 2, 3};
  b.insert(b.end(), big.begin(), big.end());
  put_bytes(b);
  auto c = read_journal(path_);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("has length"), std::string::npos) << c.error().message();
}

}  // namespace
}  // namespace pnmkv::transport
