// The journal's framing (see journal.hpp).
#include "transport/journal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/check.hpp"
#include "transport/crc32c.hpp"

namespace pnmkv::transport {

namespace {

constexpr char journal_magic[8] = {'P', 'N', 'M', 'K', 'V', 'J', 'N', 'L'};

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

uint32_t record_crc(const uint8_t* length_bytes, const uint8_t* payload, size_t n) {
  return crc32c(payload, n, crc32c(length_bytes, 4));
}

std::string errno_text() { return std::strerror(errno); }

bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

std::vector<uint8_t> journal_header() {
  std::vector<uint8_t> h(journal_magic, journal_magic + 8);
  put_u32(h, journal_version);
  put_u32(h, 0);
  return h;
}

std::vector<uint8_t> journal_frame(const std::vector<uint8_t>& record) {
  std::vector<uint8_t> out;
  out.reserve(8 + record.size());
  put_u32(out, static_cast<uint32_t>(record.size()));
  put_u32(out, record_crc(out.data(), record.data(), record.size()));
  out.insert(out.end(), record.begin(), record.end());
  return out;
}

result<journal_contents> read_journal(const std::string& path) {
  journal_contents c;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return c;
    return status{errc::io, "journal " + path + ": cannot open: " + errno_text()};
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return status{errc::io, "journal " + path + ": not a regular file"};
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > journal_bytes_max) {
    ::close(fd);
    return status{errc::capacity, "journal " + path + ": " + std::to_string(size) + " bytes, more than the " +
                                      std::to_string(journal_bytes_max) + " a journal may hold"};
  }
  std::vector<uint8_t> bytes(size);
  size_t got = 0;
  while (got < size) {
    const ssize_t r = ::read(fd, bytes.data() + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  if (got != size) return status{errc::io, "journal " + path + ": short read"};
  c.existed = true;
  if (size == 0) return c;  // created, nothing written yet: the writer adds the header
  if (size < journal_header_bytes) {
    // A crash while writing the header of a new journal: nothing was journaled.
    if (std::memcmp(bytes.data(), journal_magic, std::min<size_t>(size, 8)) == 0) {
      c.torn_tail_bytes = size;
      return c;
    }
    return status{errc::parse, "journal " + path + ": not a pnmkv journal (" + std::to_string(size) + " bytes, no header)"};
  }
  if (std::memcmp(bytes.data(), journal_magic, 8) != 0)
    return status{errc::parse, "journal " + path + ": not a pnmkv journal (its first 8 bytes are not \"PNMKVJNL\")"};
  if (const uint32_t v = get_u32(bytes.data() + 8); v != journal_version)
    return status{errc::unsupported, "journal " + path + ": format version " + std::to_string(v) +
                                         "; this pnmkv reads version " + std::to_string(journal_version)};
  uint64_t at = journal_header_bytes;
  c.valid_bytes = at;
  while (at < size) {
    const uint64_t left = size - at;
    const size_t index = c.records.size();
    auto bad = [&](const std::string& what) -> result<journal_contents> {
      return status{errc::parse, "journal " + path + ": record " + std::to_string(index) + " at byte " +
                                     std::to_string(at) + " " + what +
                                     " and is not the journal's last record: corruption, not a torn "
                                     "write; move the journal away to start a fresh cluster"};
    };
    if (left < 8) {  // the length or CRC of the last record, cut short
      c.torn_tail_bytes = left;
      break;
    }
    const uint32_t n = get_u32(bytes.data() + at);
    const uint32_t crc = get_u32(bytes.data() + at + 4);
    if (n == 0 || n > journal_record_bytes_max) {
      // A length no writer produces: zeros a crash left past the last write (a torn tail),
      // or corruption.
      bool zeros = true;
      for (uint64_t i = at; i < size && zeros; ++i) zeros = bytes[i] == 0;
      if (zeros) {
        c.torn_tail_bytes = left;
        break;
      }
      return bad("has length " + std::to_string(n) + " (allowed 1.." + std::to_string(journal_record_bytes_max) + ")");
    }
    if (left < 8 + uint64_t(n)) {  // its payload cut short
      c.torn_tail_bytes = left;
      break;
    }
    if (record_crc(bytes.data() + at, bytes.data() + at + 8, n) != crc) {
      if (at + 8 + n == size) {  // the last record: a write that did not complete
        c.torn_tail_bytes = left;
        break;
      }
      return bad("fails its CRC32C");
    }
    if (c.records.size() >= journal_records_max)
      return status{errc::capacity, "journal " + path + ": more than " + std::to_string(journal_records_max) + " records"};
    c.records.emplace_back(bytes.begin() + static_cast<std::ptrdiff_t>(at + 8),
                           bytes.begin() + static_cast<std::ptrdiff_t>(at + 8 + n));
    at += 8 + n;
    c.valid_bytes = at;
  }
  return c;
}

result<std::unique_ptr<journal_writer>> journal_writer::open(const std::string& path, uint64_t valid_bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return status{errc::io, "journal " + path + ": cannot open for writing: " + errno_text()};
  auto fail = [&](const std::string& what) -> result<std::unique_ptr<journal_writer>> {
    const std::string why = "journal " + path + ": " + what + ": " + errno_text();
    ::close(fd);
    return status{errc::io, why};
  };
  uint64_t at = valid_bytes;
  if (valid_bytes < journal_header_bytes) {  // new (or a torn header): start it over
    if (::ftruncate(fd, 0) != 0) return fail("cannot truncate");
    const auto h = journal_header();
    if (::pwrite(fd, h.data(), h.size(), 0) != ssize_t(h.size())) return fail("cannot write the header");
    if (::fdatasync(fd) != 0) return fail("cannot sync");
    // The file's directory entry too: a journal that vanishes with a crash is no journal.
    const std::string dir = std::filesystem::path(path).parent_path().string();
    const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
    at = journal_header_bytes;
  } else if (::ftruncate(fd, static_cast<off_t>(valid_bytes)) != 0) {  // a torn tail goes
    return fail("cannot truncate its torn tail");
  }
  if (::lseek(fd, static_cast<off_t>(at), SEEK_SET) < 0) return fail("cannot seek");
  return std::unique_ptr<journal_writer>(new journal_writer(fd, path, at));
}

journal_writer::~journal_writer() {
  if (fd_ >= 0) ::close(fd_);
}

status journal_writer::append(const std::vector<uint8_t>& record, bool sync) {
  if (record.empty() || record.size() > journal_record_bytes_max)
    return status{errc::capacity, "journal " + path_ + ": a record of " + std::to_string(record.size()) +
                                      " bytes (allowed 1.." + std::to_string(journal_record_bytes_max) + ")"};
  if (bytes_ + 8 + record.size() > journal_bytes_max)
    return status{errc::capacity, "journal " + path_ + " is full (" + std::to_string(journal_bytes_max) + " bytes)"};
  const auto framed = journal_frame(record);
  if (!write_all(fd_, framed.data(), framed.size()))
    return status{errc::io, "journal " + path_ + ": write failed: " + errno_text()};
  bytes_ += framed.size();
  if (sync) {
    if (::fdatasync(fd_) != 0) return status{errc::io, "journal " + path_ + ": sync failed: " + errno_text()};
    ++syncs_;
  }
  return status::ok();
}

}  // namespace pnmkv::transport
