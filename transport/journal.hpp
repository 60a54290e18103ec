// An append-only journal of records (docs/DESIGN.md §7, "Coordinator restart"): the
// coordinator writes its decisions here and a restarted coordinator reads them back. This
// file is the framing only; what a record says is the caller's (Cap'n Proto bytes, see
// actors/coordinator_journal.hpp).
//
// Layout, little-endian:
//   header   8 bytes "PNMKVJNL", u32 format version (journal_version), u32 0
//   record*  u32 payload bytes n (1 ≤ n ≤ journal_record_bytes_max),
//            u32 CRC32C over the 4 length bytes and the payload, then the n payload bytes
//
// Reading tells a torn tail from corruption. A crash while appending leaves at most the last
// record incomplete or with a wrong CRC: that tail is dropped (reported in torn_tail_bytes)
// and the writer truncates it before appending. A bad record followed by more bytes is
// corruption (a disk or a hand edit, not a crash) and refused with its offset: a
// coordinator must not resume from a history it cannot trust.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv::transport {

inline constexpr uint32_t journal_version = 1;
inline constexpr size_t journal_header_bytes = 16;
inline constexpr size_t journal_record_bytes_max = 1u << 20;    // 1 MiB a record
inline constexpr uint64_t journal_bytes_max = 1ull << 30;        // 1 GiB a journal
inline constexpr size_t journal_records_max = 4u << 20;         // records a journal may hold

struct journal_contents {
  std::vector<std::vector<uint8_t>> records;
  uint64_t valid_bytes = 0;      // header and whole records: where the next append goes
  uint64_t torn_tail_bytes = 0;  // an incomplete or unchecked last record, dropped
  bool existed = false;          // false: no file (a fresh cluster)
};

// Reads the journal at `path`. No file: empty contents (existed = false). Errors name the
// path and, for a bad record, its byte offset and index: not a journal (magic), another
// format version, a record past the limits, a CRC mismatch before the end, a file past
// journal_bytes_max.
result<journal_contents> read_journal(const std::string& path);

class journal_writer {
 public:
  // Opens `path` for appending after `valid_bytes` (read_journal's), cutting off a torn
  // tail; a new file gets its header (and the directory entry is synced).
  static result<std::unique_ptr<journal_writer>> open(const std::string& path, uint64_t valid_bytes);
  ~journal_writer();
  journal_writer(const journal_writer&) = delete;
  journal_writer& operator=(const journal_writer&) = delete;

  // Appends one record; with `sync`, fdatasync before returning (a decision point: what was
  // decided is on disk before anyone is told). Errors: empty or oversized record, a full
  // journal, a failed write or sync (errno's text).
  status append(const std::vector<uint8_t>& record, bool sync);
  uint64_t bytes() const { return bytes_; }
  uint64_t syncs() const { return syncs_; }
  const std::string& path() const { return path_; }

 private:
  journal_writer(int fd, std::string path, uint64_t bytes) : fd_(fd), path_(std::move(path)), bytes_(bytes) {}
  int fd_ = -1;
  std::string path_;
  uint64_t bytes_ = 0;
  uint64_t syncs_ = 0;
};

// The record framing alone (a test, or a fuzzer, builds files with it).
std::vector<uint8_t> journal_frame(const std::vector<uint8_t>& record);
std::vector<uint8_t> journal_header();

}  // namespace pnmkv::transport
