// KV trace import (trace/, docs/TRACE_FORMAT.md): each storage format and element type
// round-trips; bad traces are refused with the reason (file, key, expected vs found);
// selecting every page of a trace equals dense attention; head_dim padding is exact.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/kv_store.hpp"
#include "core/select.hpp"
#include "trace/formats.hpp"
#include "trace/kv_trace.hpp"

namespace pnmkv::trace {
namespace {

namespace fs = std::filesystem;

// A small trace: `layers` x `heads` KV heads, group 2, seeded normal values.
struct spec {
  std::string storage = "npy";  // npy | npz | npz-deflate | safetensors
  dtype type = dtype::f32;
  uint32_t head_dim = 16, group = 2, model_layers = 3, model_kv_heads = 2;
  std::vector<uint32_t> layers = {0, 2}, heads = {0, 1};
  uint64_t context = 100, steps = 12, query_begin = 40;
  uint64_t seed = 7;
};

std::vector<float> values_of(const spec& s, uint32_t layer, uint32_t head, char what, uint64_t n) {
  std::mt19937_64 rng(s.seed * 1000003 + layer * 1009 + head * 31 + static_cast<uint64_t>(what));
  std::normal_distribution<float> nd(0.0f, what == 'q' ? 2.0f : 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  if (what == 'k')  // a sink and a few strong keys, so selection matters
    for (uint64_t c = 0; c < s.head_dim; ++c) v[c] += 3.0f;
  return v;
}

std::vector<uint8_t> encode(const std::vector<float>& v, dtype t) {
  std::vector<uint8_t> out(v.size() * dtype_bytes(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == dtype::f32) {
      std::memcpy(&out[4 * i], &v[i], 4);
    } else {
      const uint16_t h = t == dtype::f16 ? float_to_half(v[i]) : to_bf16(v[i]).bits;
      out[2 * i] = static_cast<uint8_t>(h);
      out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
    }
  }
  return out;
}

void write_file(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream o(p, std::ios::binary);
  o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::string manifest_json(const spec& s, const std::vector<std::string>& files,
                          const std::string& extra = "") {
  auto list = [](const std::vector<uint32_t>& v) {
    std::string r = "[";
    for (size_t i = 0; i < v.size(); ++i) r += (i ? "," : "") + std::to_string(v[i]);
    return r + "]";
  };
  std::string f = "[";
  for (size_t i = 0; i < files.size(); ++i) f += (i ? ",\"" : "\"") + files[i] + "\"";
  f += "]";
  return "{\"format\":\"pnmkv-kv-trace\",\"version\":1,\"storage\":\"" +
         std::string(s.storage.rfind("npz", 0) == 0 ? "npz" : s.storage) + "\",\"files\":" + f +
         ",\"dtype\":\"" + to_string(s.type) + "\",\"model\":{\"name\":\"test\",\"layers\":" +
         std::to_string(s.model_layers) + ",\"q_heads\":" + std::to_string(s.model_kv_heads * s.group) +
         ",\"kv_heads\":" + std::to_string(s.model_kv_heads) + ",\"head_dim\":" + std::to_string(s.head_dim) +
         "},\"gqa\":\"contiguous\",\"rope_applied\":true,\"context_tokens\":" + std::to_string(s.context) +
         ",\"decode_steps\":" + std::to_string(s.steps) + ",\"positions\":" + std::to_string(s.context + s.steps) +
         ",\"query_begin\":" + std::to_string(s.query_begin) + ",\"layers\":" + list(s.layers) +
         ",\"kv_heads\":" + list(s.heads) + extra + "}";
}

// Writes the trace of `s` under a fresh folder; returns the folder.
fs::path write_trace(const spec& s, const std::string& name, const std::string& manifest_extra = "") {
  const fs::path dir = fs::path(::testing::TempDir()) / ("pnmkv_trace_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const uint64_t P = s.context + s.steps, Q = P - s.query_begin;
  std::vector<std::string> files;
  for (uint32_t l : s.layers) {
    std::vector<zip_input> zin;
    std::vector<safetensors_input> sin;
    for (uint32_t h : s.heads)
      for (char w : {'k', 'v', 'q'}) {
        const std::string tn = "layer." + std::to_string(l) + ".kv." + std::to_string(h) + "." + w;
        const std::vector<uint64_t> shape =
            w == 'q' ? std::vector<uint64_t>{Q, s.group, s.head_dim} : std::vector<uint64_t>{P, s.head_dim};
        const auto bytes = encode(values_of(s, l, h, w, *element_count(shape)), s.type);
        const auto npy = write_npy(npy_descr(s.type), shape, bytes.data(), bytes.size());
        if (s.storage == "npy") write_file(dir / (tn + ".npy"), npy);
        zin.push_back({tn + ".npy", npy});
        sin.push_back({tn, safetensors_dtype(s.type), shape, bytes});
      }
    if (s.storage.rfind("npz", 0) == 0) {
      auto z = write_zip(zin, s.storage == "npz-deflate");
      EXPECT_TRUE(z);
      files.push_back("layer." + std::to_string(l) + ".npz");
      write_file(dir / files.back(), *z);
    } else if (s.storage == "safetensors") {
      files.push_back("layer." + std::to_string(l) + ".safetensors");
      write_file(dir / files.back(), write_safetensors(sin));
    }
  }
  std::ofstream(dir / "manifest.json") << manifest_json(s, files, manifest_extra);
  return dir;
}

trace_model model_of(const spec& s) {
  return {"test-model.yaml", s.model_layers, s.model_kv_heads * s.group, s.model_kv_heads,
          (s.head_dim + 15) / 16 * 16};
}

// The value the trace must serve: the written element, decoded, then stored as bf16.
float expected_kv(const spec& s, float written) {
  const auto b = encode({written}, s.type);
  return to_float(to_bf16(element(b.data(), s.type, 0)));
}

TEST(trace_formats, every_storage_and_dtype_round_trips) {
  for (const char* storage : {"npy", "npz", "npz-deflate", "safetensors"})
    for (dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
      spec s;
      s.storage = storage;
      s.type = t;
      SCOPED_TRACE(std::string(storage) + " " + to_string(t));
      const fs::path dir = write_trace(s, std::string(storage) + to_string(t));
      auto tr = kv_trace::open(dir.string(), model_of(s));
      ASSERT_TRUE(tr) << tr.error().to_string();
      EXPECT_EQ((*tr)->head_dim(), 16u);
      EXPECT_EQ((*tr)->gqa_group(), 2u);
      if (std::string(storage) == "npz-deflate") {
        EXPECT_GT((*tr)->inflated_bytes(), 0u);
      } else {
        EXPECT_EQ((*tr)->inflated_bytes(), 0u);  // mapped, not copied
      }
      const uint64_t P = s.context + s.steps;
      for (uint32_t l : s.layers)
        for (uint32_t h : s.heads) {
          const auto k = values_of(s, l, h, 'k', P * s.head_dim);
          const auto v = values_of(s, l, h, 'v', P * s.head_dim);
          const auto q = values_of(s, l, h, 'q', (P - s.query_begin) * s.group * s.head_dim);
          std::vector<float> got(P * s.head_dim);
          (*tr)->keys(5, l, h, 0, P, got.data());  // any request reads the one sequence
          for (uint64_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], expected_kv(s, k[i])) << i;
          (*tr)->values(0, l, h, 0, P, got.data());
          for (uint64_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], expected_kv(s, v[i])) << i;
          std::vector<float> qg(s.group * s.head_dim);
          (*tr)->queries(0, l, h, 3, s.context, qg.data());  // position context + 3
          const uint64_t row = s.context + 3 - s.query_begin;
          for (uint64_t i = 0; i < qg.size(); ++i) {
            const auto b = encode({q[row * s.group * s.head_dim + i]}, t);
            ASSERT_EQ(qg[i], element(b.data(), t, 0)) << i;
          }
        }
      fs::remove_all(dir);
    }
}

TEST(trace_formats, half_conversions_are_exact_where_they_must_be) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_half(f), h) << h;  // every half survives float and back
  }
  EXPECT_EQ(half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(half_to_float(0xC000), -2.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
  EXPECT_EQ(float_to_half(1e6f), 0x7C00);
}

TEST(trace_formats, npy_headers_parse_as_numpy_writes_them) {
  const std::string h = "{'descr': '<f2', 'fortran_order': False, 'shape': (3, 2, 8), }";
  std::vector<uint8_t> b = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0,
                            static_cast<uint8_t>(h.size()), 0, 0, 0};
  b.insert(b.end(), h.begin(), h.end());
  auto p = parse_npy_header(b.data(), b.size());
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->descr, "<f2");
  EXPECT_EQ(p->shape, (std::vector<uint64_t>{3, 2, 8}));
  EXPECT_EQ(p->data_offset, 12 + h.size());
  const auto one = write_npy("<f4", {5}, nullptr, 0);
  auto q = parse_npy_header(one.data(), one.size());
  ASSERT_TRUE(q);
  EXPECT_EQ(q->shape, (std::vector<uint64_t>{5}));
  EXPECT_EQ(q->data_offset % 64, 0u);  // numpy aligns the data to 64 bytes
  b[6] = 9;
  EXPECT_NE(parse_npy_header(b.data(), b.size()).error().message().find("version 9.0"), std::string::npos);
  const std::vector<uint8_t> garbage(40, 'x');
  EXPECT_FALSE(parse_npy_header(garbage.data(), garbage.size()));
}

TEST(trace_formats, corrupt_archives_are_refused) {
  auto z = write_zip({{"a.npy", std::vector<uint8_t>(1000, 7)}}, true);
  ASSERT_TRUE(z);
  auto members = parse_zip(z->data(), z->size());
  ASSERT_TRUE(members);
  ASSERT_EQ(members->size(), 1u);
  EXPECT_TRUE(zip_extract(z->data(), z->size(), (*members)[0], 1 << 20));
  // Over the inflate limit.
  auto small = zip_extract(z->data(), z->size(), (*members)[0], 999);
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message().find("limit"), std::string::npos);
  // A flipped data byte fails the inflate or the CRC.
  auto bad = *z;
  bad[(*members)[0].data_offset + 2] ^= 0x55;
  auto m2 = parse_zip(bad.data(), bad.size());
  ASSERT_TRUE(m2);
  EXPECT_FALSE(zip_extract(bad.data(), bad.size(), (*m2)[0], 1 << 20));
  // Truncated: no end record.
  EXPECT_FALSE(parse_zip(z->data(), z->size() - 10));
  // safetensors with offsets past the end.
  auto st = write_safetensors({{"x", "F32", {4}, std::vector<uint8_t>(16, 0)}});
  EXPECT_TRUE(parse_safetensors(st.data(), st.size()));
  EXPECT_FALSE(parse_safetensors(st.data(), st.size() - 4));
}

// Opens the trace of `s` (written with `extra` in its manifest) and expects an error whose
// message holds every one of `needles`.
void expect_refused(const spec& s, const std::string& name, const std::vector<std::string>& needles,
                    const std::string& extra = "", const trace_model* model = nullptr,
                    void (*damage)(const fs::path&) = nullptr) {
  SCOPED_TRACE(name);
  const fs::path dir = write_trace(s, name, extra);
  if (damage) damage(dir);
  auto tr = kv_trace::open(dir.string(), model ? *model : model_of(s));
  ASSERT_FALSE(tr) << "accepted";
  for (const auto& n : needles)
    EXPECT_NE(tr.error().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << tr.error().message();
  fs::remove_all(dir);
}

TEST(trace_import, bad_traces_are_refused_with_the_reason) {
  spec s;
  // The model file disagrees with the manifest.
  trace_model m = model_of(s);
  m.kv_heads = 4;
  expect_refused(s, "kvheads", {"model.kv_heads = 2", "test-model.yaml", "kv_heads = 4"}, "", &m);
  m = model_of(s);
  m.head_dim = 32;
  expect_refused(s, "headdim", {"model.head_dim = 16", "head_dim = 32", "allowed: 16"}, "", &m);
  // Pre-RoPE traces, unknown dtypes, inconsistent positions.
  spec pre = s;
  expect_refused(pre, "rope", {"rope_applied", "post-RoPE"}, ",\"rope_applied\":false");
  // A tensor in the wrong dtype: the manifest says float16, files hold float32.
  {
    spec w = s;
    w.storage = "safetensors";
    const fs::path dir = write_trace(w, "dtype");
    spec say = w;
    say.type = dtype::f16;
    std::ofstream(dir / "manifest.json") << manifest_json(say, {"layer.0.safetensors", "layer.2.safetensors"});
    auto tr = kv_trace::open(dir.string(), model_of(w));
    ASSERT_FALSE(tr);
    for (const char* n : {"layer.0.safetensors", "key 'layer.0.kv.0.k'", "dtype 'F32'", "expected 'F16'"})
      EXPECT_NE(tr.error().message().find(n), std::string::npos) << n << " | " << tr.error().message();
    fs::remove_all(dir);
  }
  // A tensor of the wrong shape (fewer positions than the manifest says).
  {
    const fs::path dir = write_trace(s, "shape");
    spec say = s;
    say.context = 120;
    std::ofstream(dir / "manifest.json") << manifest_json(say, {});
    auto tr = kv_trace::open(dir.string(), model_of(s));
    ASSERT_FALSE(tr);
    for (const char* n : {"layer.0.kv.0", "shape [112, 16]", "expected [132, 16]"})
      EXPECT_NE(tr.error().message().find(n), std::string::npos) << n << " | " << tr.error().message();
    fs::remove_all(dir);
  }
  // A layer the manifest promises but no file holds.
  expect_refused(s, "missing", {"layer.2.kv.1.v", "layer 2, KV head 1"}, "", nullptr, [](const fs::path& d) {
    fs::remove(d / "layer.2.kv.1.v.npy");
  });
  // A non-finite value.
  expect_refused(s, "nan", {"layer.0.kv.1.q", "not finite"}, "", nullptr, [](const fs::path& d) {
    std::fstream f(d / "layer.0.kv.1.q.npy", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(128 + 4 * 5);
    const float nan = std::nanf("");
    f.write(reinterpret_cast<const char*>(&nan), 4);
  });
  // Bad manifests.
  expect_refused(s, "positions", {"positions = 5", "context_tokens + decode_steps = 112"}, ",\"positions\":5");
  expect_refused(s, "storage", {"storage", "allowed: npy, npz, safetensors"}, ",\"storage\":\"hdf5\"");
  expect_refused(s, "gqa", {"gqa", "allowed: contiguous"}, ",\"gqa\":\"interleaved\"");
  expect_refused(s, "layers", {"layers entry 7", "[0, 3)"}, ",\"layers\":[0,7]");
  expect_refused(s, "nomanifest", {"manifest.json", "docs/TRACE_FORMAT.md"}, "", nullptr,
                 [](const fs::path& d) { fs::remove(d / "manifest.json"); });
}

TEST(trace_import, spans_and_heads_outside_the_trace_are_refused_naming_both) {
  spec s;
  const fs::path dir = write_trace(s, "span");
  auto tr = kv_trace::open(dir.string(), model_of(s));
  ASSERT_TRUE(tr) << tr.error().to_string();
  EXPECT_TRUE((*tr)->check_span(100, 12, "x"));
  EXPECT_TRUE((*tr)->check_span(40, 72, "x"));
  auto longer = (*tr)->check_span(110, 8, "workload.context_tokens = 110 with run.steps = 8");
  ASSERT_FALSE(longer);
  for (const char* n : {"workload.context_tokens = 110", "118 positions", "holds 112 positions"})
    EXPECT_NE(longer.message().find(n), std::string::npos) << n << " | " << longer.message();
  auto early = (*tr)->check_span(30, 8, "ctx 30");
  ASSERT_FALSE(early);
  EXPECT_NE(early.message().find("queries from position 40"), std::string::npos) << early.message();
  EXPECT_TRUE((*tr)->check_heads({0, 2}, {0, 1}, "x"));
  auto missing = (*tr)->check_heads({0, 1}, {0}, "cluster.live_layers = 2");
  ASSERT_FALSE(missing);
  for (const char* n : {"cluster.live_layers = 2", "layer 1", "layers [0, 2]", "never extended"})
    EXPECT_NE(missing.message().find(n), std::string::npos) << n << " | " << missing.message();
  fs::remove_all(dir);
}

// Selecting every page of a trace is dense attention; the padded head_dim (8 -> 16) serves
// the same logits and outputs as the trace's own 8 dimensions, softmax_scale included.
TEST(trace_import, full_budget_equals_dense_and_padding_is_exact) {
  for (uint32_t d : {16u, 8u}) {
    spec s;
    s.head_dim = d;
    s.type = dtype::bf16;
    SCOPED_TRACE(d);
    const fs::path dir = write_trace(s, "dense" + std::to_string(d), ",\"softmax_scale\":0.3");
    auto opened = kv_trace::open(dir.string(), model_of(s));
    ASSERT_TRUE(opened) << opened.error().to_string();
    const kv_trace& tr = **opened;
    const uint32_t D = tr.head_dim(), g = tr.gqa_group(), page = 16;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (uint32_t l : s.layers)
      for (uint32_t h : s.heads) {
        auto created = kv_head_store::create({D, page, summary_precision::bf16}, s.context + s.steps);
        ASSERT_TRUE(created);
        kv_head_store store = std::move(created).value();
        ASSERT_TRUE(fill_store(tr, store, 0, l, h, 0, s.context));
        for (uint32_t step = 0; step < s.steps; ++step) {
          ASSERT_TRUE(fill_store(tr, store, 0, l, h, s.context + step, 1));
          std::vector<float> q(g * D);
          tr.queries(0, l, h, step, s.context, q.data());
          partial dense, sparse;
          ASSERT_TRUE(dense_attention_reference(store, q.data(), g, scale, dense));
          std::vector<uint32_t> all(store.page_count());
          for (uint32_t p = 0; p < all.size(); ++p) all[p] = p;
          ASSERT_TRUE(attend_pages(store, q.data(), g, all.data(), all.size(), scale, sparse));
          // Against the trace's own numbers: softmax(0.3 · q·k) over positions 0..pos.
          const uint64_t pos = s.context + step;
          const auto kf = values_of(s, l, h, 'k', (pos + 1) * d);
          const auto vf = values_of(s, l, h, 'v', (pos + 1) * d);
          const auto qf = values_of(s, l, h, 'q', (s.context + s.steps - s.query_begin) * g * d);
          for (uint32_t j = 0; j < g; ++j) {
            std::vector<double> logit(pos + 1);
            double mx = -1e300;
            for (uint64_t p = 0; p <= pos; ++p) {
              double dot = 0;
              for (uint32_t c = 0; c < d; ++c)
                dot += static_cast<double>(to_float(to_bf16(qf[((pos - s.query_begin) * g + j) * d + c]))) *
                       expected_kv(s, kf[p * d + c]);
              logit[p] = 0.3 * dot;
              mx = std::max(mx, logit[p]);
            }
            double z = 0;
            std::vector<double> o(d, 0.0);
            for (uint64_t p = 0; p <= pos; ++p) {
              const double w = std::exp(logit[p] - mx);
              z += w;
              for (uint32_t c = 0; c < d; ++c) o[c] += w * expected_kv(s, vf[p * d + c]);
            }
            for (uint32_t c = 0; c < D; ++c) {
              const double ref = c < d ? o[c] / z : 0.0;
              EXPECT_NEAR(sparse.o[j * D + c], dense.o[j * D + c], 1e-5 * (1 + std::fabs(ref)));
              EXPECT_NEAR(dense.o[j * D + c], ref, 1e-4 * (1 + std::fabs(ref)));
            }
            EXPECT_NEAR(sparse.lse[j], dense.lse[j], 1e-5 * (1 + std::fabs(dense.lse[j])));
          }
        }
      }
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace pnmkv::trace
