#include "trace/kv_trace.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/check.hpp"

namespace pnmkv::trace {

// A read-only memory map of a whole file (nothing mapped for an empty file).
class mapped_file {
 public:
  static result<std::unique_ptr<mapped_file>> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return status{errc::io, "cannot open '" + path + "': " + std::strerror(errno)};
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return status{errc::io, "'" + path + "' is not a regular file"};
    }
    auto f = std::unique_ptr<mapped_file>(new mapped_file);
    f->size_ = static_cast<size_t>(st.st_size);
    if (f->size_ > 0) {
      void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        return status{errc::io, "cannot map '" + path + "': " + std::strerror(e)};
      }
      f->data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    return f;
  }
  ~mapped_file() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  mapped_file() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

namespace {

std::string join(const std::vector<uint32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string tensor_name(uint32_t layer, uint32_t head, char what) {
  return "layer." + std::to_string(layer) + ".kv." + std::to_string(head) + "." + what;
}

uint32_t round_up16(uint32_t d) { return (d + 15) / 16 * 16; }

}  // namespace

result<trace_manifest> parse_manifest(const std::string& text, const std::string& file) {
  auto bad = [&](const std::string& key, const std::string& what) {
    return status{errc::invalid_argument, "trace manifest '" + file + "': " + key + " " + what};
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return status{errc::parse, "trace manifest '" + file + "' is not a JSON object"};
  auto str = [&](const char* key, std::string& out) -> status {
    if (!j.contains(key) || !j[key].is_string()) return bad(key, "is missing or not a string");
    out = j[key].get<std::string>();
    return status::ok();
  };
  auto uint = [&](const nlohmann::json& o, const std::string& key, uint64_t lo, uint64_t hi,
                  uint64_t& out) -> status {
    const std::string leaf = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
    if (!o.contains(leaf) || !o[leaf].is_number_integer())
      return bad(key, "is missing or not an integer");
    const int64_t v = o[leaf].get<int64_t>();
    if (v < 0 || static_cast<uint64_t>(v) < lo || static_cast<uint64_t>(v) > hi)
      return bad(key, "= " + std::to_string(v) + " is out of range; allowed: [" + std::to_string(lo) +
                          ", " + std::to_string(hi) + "]");
    out = static_cast<uint64_t>(v);
    return status::ok();
  };
  trace_manifest m;
  std::string s;
  if (auto st = str("format", s); !st) return st;
  if (s != "pnmkv-kv-trace") return bad("format", "= '" + s + "'; allowed: pnmkv-kv-trace");
  uint64_t u = 0;
  if (auto st = uint(j, "version", 1, 1, u); !st) return st;
  if (auto st = str("storage", m.storage); !st) return st;
  if (m.storage != "npy" && m.storage != "npz" && m.storage != "safetensors")
    return bad("storage", "= '" + m.storage + "'; allowed: npy, npz, safetensors");
  if (j.contains("files")) {
    if (!j["files"].is_array()) return bad("files", "is not a list of strings");
    for (const auto& f : j["files"]) {
      if (!f.is_string()) return bad("files", "is not a list of strings");
      const std::string name = f.get<std::string>();
      if (name.empty() || name[0] == '/' || name.find("..") != std::string::npos)
        return bad("files", "entry '" + name + "' is not a plain relative path (no '/' start, no '..')");
      m.files.push_back(name);
    }
  }
  if (m.files.size() > listed_max) return bad("files", "lists more than " + std::to_string(listed_max));
  if (m.storage == "npy" && !m.files.empty())
    return bad("files", "must be empty for storage npy (files are named <tensor>.npy)");
  if (m.storage != "npy" && m.files.empty())
    return bad("files", "is empty; storage " + m.storage + " needs the container files listed");
  if (auto st = str("dtype", s); !st) return st;
  auto t = dtype_from_manifest(s);
  if (!t) return bad("dtype", "= '" + s + "'; allowed: float32, float16, bfloat16");
  m.type = *t;
  if (!j.contains("model") || !j["model"].is_object()) return bad("model", "is missing or not an object");
  const auto& mo = j["model"];
  if (mo.contains("name") && mo["name"].is_string()) m.model_name = mo["name"].get<std::string>();
  uint64_t layers = 0, qh = 0, kvh = 0, hd = 0;
  if (auto st = uint(mo, "model.layers", 1, listed_max, layers); !st) return st;
  if (auto st = uint(mo, "model.q_heads", 1, listed_max, qh); !st) return st;
  if (auto st = uint(mo, "model.kv_heads", 1, listed_max, kvh); !st) return st;
  if (auto st = uint(mo, "model.head_dim", 1, 512, hd); !st) return st;
  if (qh % kvh != 0)
    return bad("model.q_heads", "= " + std::to_string(qh) + " is not a multiple of model.kv_heads = " +
                                    std::to_string(kvh));
  if (qh / kvh > 64) return bad("model.q_heads", "/ model.kv_heads is above 64 (GQA group limit)");
  m.model_layers = static_cast<uint32_t>(layers);
  m.q_heads = static_cast<uint32_t>(qh);
  m.kv_heads = static_cast<uint32_t>(kvh);
  m.head_dim = static_cast<uint32_t>(hd);
  if (auto st = str("gqa", s); !st) return st;
  if (s != "contiguous") return bad("gqa", "= '" + s + "'; allowed: contiguous");
  if (!j.contains("rope_applied") || !j["rope_applied"].is_boolean())
    return bad("rope_applied", "is missing or not a bool");
  if (!j["rope_applied"].get<bool>())
    return bad("rope_applied", "= false: pnmkv imports post-RoPE queries and keys only (Quest "
                               "scores the keys attention multiplies); dump after RoPE");
  m.softmax_scale = 1.0 / std::sqrt(static_cast<double>(m.head_dim));
  if (j.contains("softmax_scale") && !j["softmax_scale"].is_null()) {
    if (!j["softmax_scale"].is_number()) return bad("softmax_scale", "is not a number");
    m.softmax_scale = j["softmax_scale"].get<double>();
    if (!(m.softmax_scale > 0 && m.softmax_scale < 1e6))
      return bad("softmax_scale", "= " + std::to_string(m.softmax_scale) + "; allowed: (0, 1e6)");
  }
  if (auto st = uint(j, "context_tokens", 1, 1ull << 32, m.context_tokens); !st) return st;
  if (auto st = uint(j, "decode_steps", 0, 1ull << 32, m.decode_steps); !st) return st;
  if (auto st = uint(j, "positions", 1, 1ull << 33, m.positions); !st) return st;
  if (m.positions != m.context_tokens + m.decode_steps)
    return bad("positions", "= " + std::to_string(m.positions) + " is not context_tokens + decode_steps = " +
                                std::to_string(m.context_tokens + m.decode_steps));
  if (auto st = uint(j, "query_begin", 0, m.context_tokens, m.query_begin); !st) return st;
  auto list = [&](const char* key, uint32_t bound, const char* bound_name,
                  std::vector<uint32_t>& out) -> status {
    if (!j.contains(key) || !j[key].is_array() || j[key].empty())
      return bad(key, "is missing or not a non-empty list of integers");
    if (j[key].size() > listed_max) return bad(key, "lists more than " + std::to_string(listed_max));
    for (const auto& e : j[key]) {
      if (!e.is_number_integer()) return bad(key, "is not a list of integers");
      const int64_t v = e.get<int64_t>();
      if (v < 0 || v >= bound)
        return bad(key, "entry " + std::to_string(v) + " is out of range; allowed: [0, " +
                            std::to_string(bound) + ") (" + bound_name + ")");
      if (!out.empty() && static_cast<uint32_t>(v) <= out.back())
        return bad(key, "is not strictly ascending");
      out.push_back(static_cast<uint32_t>(v));
    }
    return status::ok();
  };
  if (auto st = list("layers", m.model_layers, "model.layers", m.layers); !st) return st;
  if (auto st = list("kv_heads", m.kv_heads, "model.kv_heads", m.heads); !st) return st;
  if (j.contains("tokens") && !j["tokens"].is_null()) {
    if (!j["tokens"].is_array() || j["tokens"].size() != m.positions)
      return bad("tokens", "is not a list of " + std::to_string(m.positions) + " token ids (positions)");
    for (const auto& e : j["tokens"]) {
      if (!e.is_number_integer()) return bad("tokens", "is not a list of integers");
      m.tokens.push_back(e.get<int64_t>());
    }
  }
  if (j.contains("source") && j["source"].is_string()) m.source = j["source"].get<std::string>();
  return m;
}

kv_trace::~kv_trace() = default;

result<std::unique_ptr<kv_trace>> kv_trace::open(const std::string& dir, const trace_model& model) {
  const std::string mf = dir + "/manifest.json";
  std::ifstream in(mf, std::ios::binary);
  if (!in)
    return status{errc::io, "workload.trace_dir '" + dir + "': cannot read '" + mf +
                                "' (a KV trace folder holds manifest.json; docs/TRACE_FORMAT.md)"};
  std::string text;
  text.resize(manifest_bytes_max + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > manifest_bytes_max)
    return status{errc::capacity, "trace manifest '" + mf + "' exceeds " +
                                      std::to_string(manifest_bytes_max) + " bytes"};
  auto m = parse_manifest(text, mf);
  if (!m) return m.error();
  auto t = std::unique_ptr<kv_trace>(new kv_trace);
  t->dir_ = dir;
  t->m_ = std::move(m).value();
  const trace_manifest& mm = t->m_;
  auto mismatch = [&](const std::string& key, uint64_t trace_v, uint64_t model_v) {
    return status{errc::shape_mismatch, "trace '" + dir + "' (manifest model." + key + " = " +
                                            std::to_string(trace_v) + ") does not match the model file '" +
                                            model.file + "' (" + key + " = " + std::to_string(model_v) + ")"};
  };
  if (mm.model_layers != model.layers) return mismatch("layers", mm.model_layers, model.layers);
  if (mm.q_heads != model.q_heads) return mismatch("q_heads", mm.q_heads, model.q_heads);
  if (mm.kv_heads != model.kv_heads) return mismatch("kv_heads", mm.kv_heads, model.kv_heads);
  if (model.head_dim != mm.head_dim && !(mm.head_dim % 16 != 0 && model.head_dim == round_up16(mm.head_dim)))
    return status{errc::shape_mismatch,
                  "trace '" + dir + "' (manifest model.head_dim = " + std::to_string(mm.head_dim) +
                      ") does not match the model file '" + model.file + "' (head_dim = " +
                      std::to_string(model.head_dim) + "); allowed: " + std::to_string(mm.head_dim) +
                      (mm.head_dim % 16 ? ", or " + std::to_string(round_up16(mm.head_dim)) +
                                              " (zero-padded to the kernels' multiple of 16)"
                                        : std::string())};
  t->head_dim_ = model.head_dim;
  const bool scale_given = std::fabs(mm.softmax_scale * std::sqrt(double(mm.head_dim)) - 1.0) > 1e-12;
  t->query_scale_ = static_cast<float>(
      scale_given ? mm.softmax_scale * std::sqrt(static_cast<double>(t->head_dim_))
                  : std::sqrt(static_cast<double>(t->head_dim_) / mm.head_dim));
  if (auto st = t->index_files(); !st) return st;
  if (auto st = t->check_tensors(); !st) return st;
  return t;
}

status kv_trace::add_tensor(const std::string& name, const uint8_t* data, const std::string& type,
                            bool npy, bool fortran, const std::vector<uint64_t>& shape,
                            uint64_t bytes, const std::string& where) {
  const std::string expected = npy ? npy_descr(m_.type) : safetensors_dtype(m_.type);
  if (type != expected)
    return status{errc::shape_mismatch, "trace " + where + ": dtype '" + type + "', expected '" +
                                            expected + "' (manifest dtype " + to_string(m_.type) + ")"};
  if (fortran)
    return status{errc::invalid_argument, "trace " + where + ": fortran_order True; write C order"};
  auto count = element_count(shape);
  if (!count) return status{count.error().code(), "trace " + where + ": " + count.error().message()};
  if (*count * dtype_bytes(m_.type) != bytes)
    return status{errc::shape_mismatch, "trace " + where + ": shape " + shape_text(shape) + " needs " +
                                            std::to_string(*count * dtype_bytes(m_.type)) +
                                            " bytes of data, found " + std::to_string(bytes)};
  if (by_name_.count(name))
    return status{errc::invalid_argument, "trace " + where + ": tensor '" + name +
                                              "' is also in " + by_name_[name].where};
  by_name_[name] = tensor{data, shape, where};
  return status::ok();
}

status kv_trace::index_files() {
  std::set<std::string> needed;
  for (uint32_t l : m_.layers)
    for (uint32_t h : m_.heads)
      for (char w : {'k', 'v', 'q'}) needed.insert(tensor_name(l, h, w));
  auto map = [&](const std::string& rel) -> result<const mapped_file*> {
    auto f = mapped_file::open(dir_ + "/" + rel);
    if (!f) return status{f.error().code(), "trace: " + f.error().message()};
    mapped_bytes_ += (*f)->size();
    files_.push_back(std::move(f).value());
    return files_.back().get();
  };
  auto add_npy = [&](const std::string& name, const uint8_t* data, size_t size,
                     const std::string& where) -> status {
    auto h = parse_npy_header(data, size);
    if (!h) return status{h.error().code(), "trace " + where + ": " + h.error().message()};
    return add_tensor(name, data + h->data_offset, h->descr, true, h->fortran_order, h->shape,
                      size - h->data_offset, where);
  };
  if (m_.storage == "npy") {
    for (uint32_t l : m_.layers)
      for (uint32_t h : m_.heads)
        for (char w : {'k', 'v', 'q'}) {
          const std::string name = tensor_name(l, h, w);
          auto f = map(name + ".npy");
          if (!f)
            return status{f.error().code(), "trace '" + dir_ + "': tensor '" + name + "' (layer " +
                                                std::to_string(l) + ", KV head " + std::to_string(h) +
                                                ", listed in the manifest): " + f.error().message()};
          const std::string where = "file '" + dir_ + "/" + name + ".npy'";
          if (auto st = add_npy(name, (*f)->data(), (*f)->size(), where); !st) return st;
        }
    return status::ok();
  }
  for (const std::string& rel : m_.files) {
    auto f = map(rel);
    if (!f) return f.error();
    const std::string path = dir_ + "/" + rel;
    const uint8_t* base = (*f)->data();
    const size_t size = (*f)->size();
    if (m_.storage == "npz") {
      auto members = parse_zip(base, size);
      if (!members) return status{members.error().code(), "trace file '" + path + "': " + members.error().message()};
      for (const zip_member& zm : *members) {
        if (zm.name.size() < 4 || zm.name.compare(zm.name.size() - 4, 4, ".npy") != 0) continue;
        const std::string name = zm.name.substr(0, zm.name.size() - 4);
        if (!needed.count(name)) continue;
        const std::string where = "file '" + path + "', key '" + name + "'";
        if (zm.method == 0) {
          if (auto st = add_npy(name, base + zm.data_offset, zm.uncompressed_bytes, where); !st) return st;
        } else {
          auto bytes = zip_extract(base, size, zm, inflated_bytes_max - inflated_bytes_);
          if (!bytes)
            return status{bytes.error().code(),
                          "trace " + where + ": " + bytes.error().message() +
                              " (deflated members are inflated into memory; store them uncompressed, "
                              "np.savez, or use npy/safetensors storage)"};
          inflated_bytes_ += bytes->size();
          inflated_.push_back(std::move(bytes).value());
          const auto& b = inflated_.back();
          if (auto st = add_npy(name, b.data(), b.size(), where); !st) return st;
        }
      }
    } else {
      auto entries = parse_safetensors(base, size);
      if (!entries) return status{entries.error().code(), "trace file '" + path + "': " + entries.error().message()};
      for (const safetensors_entry& e : *entries) {
        if (!needed.count(e.name)) continue;
        const std::string where = "file '" + path + "', key '" + e.name + "'";
        if (auto st = add_tensor(e.name, base + e.begin, e.dtype, false, false, e.shape, e.end - e.begin, where); !st)
          return st;
      }
    }
  }
  return status::ok();
}

status kv_trace::check_tensors() {
  const uint64_t d = m_.head_dim, g = m_.group();
  for (uint32_t l : m_.layers)
    for (uint32_t h : m_.heads) {
      head_tensors ht;
      for (char w : {'k', 'v', 'q'}) {
        const std::string name = tensor_name(l, h, w);
        auto it = by_name_.find(name);
        if (it == by_name_.end())
          return status{errc::invalid_argument,
                        "trace '" + dir_ + "': tensor '" + name + "' (layer " + std::to_string(l) +
                            ", KV head " + std::to_string(h) + ", listed in the manifest) is in none of its " +
                            (m_.storage == "npy" ? std::string("files") : m_.storage + " files")};
        const tensor& t = it->second;
        const std::vector<uint64_t> expected =
            w == 'q' ? std::vector<uint64_t>{m_.positions - m_.query_begin, g, d}
                     : std::vector<uint64_t>{m_.positions, d};
        if (t.shape != expected)
          return status{errc::shape_mismatch,
                        "trace " + t.where + ": shape " + shape_text(t.shape) + ", expected " +
                            shape_text(expected) +
                            (w == 'q' ? " ([positions - query_begin, q_heads / kv_heads, head_dim])"
                                      : " ([positions, head_dim])")};
        // Values must survive the import: finite, and K/V finite in bf16, queries once scaled.
        const uint64_t n = *element_count(t.shape);
        for (uint64_t i = 0; i < n; ++i) {
          const float x = element(t.data, m_.type, i);
          const float y = w == 'q' ? x * query_scale_ : to_float(to_bf16(x));
          if (!std::isfinite(y))
            return status{errc::invalid_argument,
                          "trace " + t.where + ": element " + std::to_string(i) + " (row " +
                              std::to_string(i / (w == 'q' ? g * d : d)) + ") is " + std::to_string(x) +
                              (std::isfinite(x) ? ", not finite once converted" : ", not finite")};
        }
        (w == 'k' ? ht.k : w == 'v' ? ht.v : ht.q) = t;
      }
      heads_[{l, h}] = std::move(ht);
    }
  by_name_.clear();
  return status::ok();
}

bool kv_trace::has(uint32_t layer, uint32_t kv_head) const { return heads_.count({layer, kv_head}) > 0; }

const kv_trace::head_tensors& kv_trace::at(uint32_t layer, uint32_t kv_head) const {
  auto it = heads_.find({layer, kv_head});
  PNMKV_CHECK(it != heads_.end(), "layer ", layer, ", KV head ", kv_head,
              " is not in the trace (check_heads first)");
  return it->second;
}

status kv_trace::check_span(uint64_t context, uint64_t steps, const std::string& what) const {
  const std::string has = "trace '" + dir_ + "' holds " + std::to_string(m_.positions) +
                          " positions (context_tokens " + std::to_string(m_.context_tokens) + " + decode_steps " +
                          std::to_string(m_.decode_steps) + ") with queries from position " +
                          std::to_string(m_.query_begin);
  if (context + steps > m_.positions)
    return status{errc::out_of_range, what + " needs " + std::to_string(context + steps) +
                                          " positions (context " + std::to_string(context) + " + " +
                                          std::to_string(steps) + " steps); the " + has};
  if (context < m_.query_begin)
    return status{errc::out_of_range, what + " decodes from position " + std::to_string(context) +
                                          "; the " + has + " (a shorter context needs a dump with an "
                                          "earlier query_begin)"};
  return status::ok();
}

status kv_trace::check_heads(const std::vector<uint32_t>& layers, const std::vector<uint32_t>& heads,
                             const std::string& what) const {
  for (uint32_t l : layers)
    for (uint32_t h : heads)
      if (!has(l, h))
        return status{errc::out_of_range, what + " needs layer " + std::to_string(l) + ", KV head " +
                                              std::to_string(h) + ", which trace '" + dir_ +
                                              "' does not hold (layers " + join(m_.layers) + ", KV heads " +
                                              join(m_.heads) + "); traces are never extended"};
  return status::ok();
}

void kv_trace::rows(const tensor& t, uint64_t row_begin, uint64_t n_rows, bf16* out) const {
  const uint32_t d = m_.head_dim, D = head_dim_;
  PNMKV_CHECK(row_begin + n_rows <= t.shape[0], "rows [", row_begin, ", ", row_begin + n_rows,
              ") past the ", t.shape[0], " of ", t.where);
  for (uint64_t r = 0; r < n_rows; ++r) {
    bf16* o = out + r * D;
    const uint64_t base = (row_begin + r) * d;
    if (m_.type == dtype::bf16) {
      for (uint32_t c = 0; c < d; ++c) std::memcpy(&o[c].bits, t.data + 2 * (base + c), 2);
    } else {
      for (uint32_t c = 0; c < d; ++c) o[c] = to_bf16(element(t.data, m_.type, base + c));
    }
    for (uint32_t c = d; c < D; ++c) o[c] = bf16{0};
  }
}

void kv_trace::keys(uint64_t, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
                    uint64_t n_tokens, bf16* out) const {
  rows(at(layer, kv_head).k, position_begin, n_tokens, out);
}

void kv_trace::values(uint64_t, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
                      uint64_t n_tokens, bf16* out) const {
  rows(at(layer, kv_head).v, position_begin, n_tokens, out);
}

void kv_trace::queries(uint64_t, uint32_t layer, uint32_t kv_head, uint64_t step,
                       uint64_t context_tokens, float* out) const {
  const tensor& t = at(layer, kv_head).q;
  const uint64_t pos = context_tokens + step;
  PNMKV_CHECK(pos >= m_.query_begin && pos < m_.positions, "query position ", pos, " outside [",
              m_.query_begin, ", ", m_.positions, ") of ", t.where);
  const uint32_t d = m_.head_dim, D = head_dim_, g = m_.group();
  const uint64_t base = (pos - m_.query_begin) * g * d;
  for (uint32_t q = 0; q < g; ++q) {
    for (uint32_t c = 0; c < d; ++c) out[q * D + c] = element(t.data, m_.type, base + q * d + c) * query_scale_;
    for (uint32_t c = d; c < D; ++c) out[q * D + c] = 0.0f;
  }
}

}  // namespace pnmkv::trace
