// Measures on a real GPU what the cost model charges the GPU for (model/cost_model.cpp):
//   - one dense transformer layer of decode / chunked prefill (QKV, O, gate+up, down GEMMs in
//     bf16 through cuBLAS) for a batch of tokens, for model shapes given on the command line;
//   - the LM head GEMM;
//   - HBM copy bandwidth (device to device), behind gpu_hbm_write and the memory roofline;
//   - board power while idle and while streaming weights (nvidia-smi, read only), behind the
//     energy figures gpu_idle_power_w and hbm_pj_per_bit.
// Weights rotate over enough layer copies that they stream from HBM, not L2, as at decode.
// Output: one JSON object on stdout; `pnmkv bench gpu-model --measured FILE` sets it next to
// the cost model's prediction for the same shapes and batches.
//
// Build (any CUDA 12+ toolkit):  nvcc -O3 -std=c++17 -arch=sm_90 bench/gpu/dense_layer_bench.cu -lcublas -o dense_layer_bench
// Run:  ./dense_layer_bench > gpu.json     (about a minute on an H100)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#define CHECK_CUDA(x)                                                                         \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define CHECK_CUBLAS(x)                                                         \
  do {                                                                          \
    cublasStatus_t s_ = (x);                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                          \
      std::fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #x, int(s_)); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

namespace {

struct shape {
  const char* name;
  long hidden, q_heads, kv_heads, head_dim, ffn, vocab;
  int tp;  // tensor-parallel degree: this GPU holds 1/tp of each GEMM
};

struct gemm {
  long k, n;  // y[b × n] = x[b × k] · W[k × n]
};

std::vector<gemm> layer_gemms(const shape& s) {
  const long qd = s.q_heads * s.head_dim, kvd = s.kv_heads * s.head_dim;
  // Column-parallel QKV and gate/up split n; row-parallel O and down split k (Megatron).
  return {{s.hidden, (qd + 2 * kvd) / s.tp},
          {qd / s.tp, s.hidden},
          {s.hidden, 2 * s.ffn / s.tp},
          {s.ffn / s.tp, s.hidden}};
}

__global__ void fill(__nv_bfloat16* p, size_t n, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(scale * float((i * 2654435761u) % 1000) / 1000.0f - scale / 2);
}

void fill_random(__nv_bfloat16* p, size_t n, float scale) {
  fill<<<1024, 256>>>(p, n, scale);
  CHECK_CUDA(cudaGetLastError());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Board power in W (nvidia-smi, read only); -1 when it cannot be read.
double power_w() {
  FILE* p = popen("nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits -i 0 2>/dev/null", "r");
  if (!p) return -1;
  char buf[64] = {0};
  double w = -1;
  if (std::fgets(buf, sizeof buf, p)) w = std::atof(buf);
  pclose(p);
  return w > 0 ? w : -1;
}

struct layer_set {
  std::vector<gemm> g;
  int copies = 1;
  std::vector<__nv_bfloat16*> w;  // per copy, per gemm
  size_t weight_bytes = 0;        // one layer
};

layer_set make_layers(const std::vector<gemm>& g, size_t min_total_bytes) {
  layer_set L;
  L.g = g;
  for (const auto& x : g) L.weight_bytes += size_t(x.k) * x.n * 2;
  L.copies = int(std::max<size_t>(2, (min_total_bytes + L.weight_bytes - 1) / L.weight_bytes));
  for (int c = 0; c < L.copies; ++c)
    for (const auto& x : g) {
      __nv_bfloat16* p = nullptr;
      CHECK_CUDA(cudaMalloc(&p, size_t(x.k) * x.n * 2));
      fill_random(p, size_t(x.k) * x.n, 0.05f);
      L.w.push_back(p);
    }
  return L;
}

void free_layers(layer_set& L) {
  for (auto* p : L.w) CHECK_CUDA(cudaFree(p));
  L.w.clear();
}

// Median time of one layer (all its GEMMs) at `batch` tokens, weights rotating over copies.
double time_layer_ms(cublasHandle_t h, layer_set& L, long batch, __nv_bfloat16* x, __nv_bfloat16* y,
                     int reps) {
  const float alpha = 1.0f, beta = 0.0f;
  auto run_copy = [&](int c) {
    for (size_t i = 0; i < L.g.size(); ++i) {
      const gemm& g = L.g[i];
      // Column-major: Y(n × b) = W(k × n)ᵀ · X(k × b).
      CHECK_CUBLAS(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(g.n), int(batch), int(g.k), &alpha,
                                L.w[size_t(c) * L.g.size() + i], CUDA_R_16BF, int(g.k), x, CUDA_R_16BF,
                                int(g.k), &beta, y, CUDA_R_16BF, int(g.n), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    }
  };
  for (int c = 0; c < L.copies; ++c) run_copy(c);  // warm up (heuristics, clocks)
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a));
    for (int c = 0; c < L.copies; ++c) run_copy(c);
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(double(t) / L.copies);
  }
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  return median(ms);
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cublasHandle_t h;
  CHECK_CUBLAS(cublasCreate(&h));
  const double idle_w = power_w();

  const std::vector<shape> shapes = {
      {"llama-3.1-8b", 4096, 32, 8, 128, 14336, 128256, 1},
      {"llama-3.1-70b", 8192, 64, 8, 128, 28672, 128256, 1},
      {"llama-3.1-405b/tp8", 16384, 128, 8, 128, 53248, 128256, 8},
  };
  const std::vector<long> batches = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  const long batch_max = batches.back();
  const size_t l2 = size_t(prop.l2CacheSize);
  const size_t rotate_bytes = std::max<size_t>(size_t(2) << 30, 16 * l2);  // ≥ 2 GiB of weights

  // Activations: the largest k and n over every shape, at the largest batch.
  long kmax = 0, nmax = 0;
  for (const auto& s : shapes) {
    for (const auto& g : layer_gemms(s)) kmax = std::max(kmax, g.k), nmax = std::max(nmax, g.n);
    nmax = std::max(nmax, s.vocab / s.tp);
  }
  __nv_bfloat16 *x = nullptr, *y = nullptr;
  CHECK_CUDA(cudaMalloc(&x, size_t(kmax) * batch_max * 2));
  CHECK_CUDA(cudaMalloc(&y, size_t(nmax) * batch_max * 2));
  fill_random(x, size_t(kmax) * batch_max, 1.0f);

  std::printf("{\n  \"format\": \"pnmkv-gpu-measure/1\",\n  \"device\": \"%s\",\n", prop.name);
  std::printf("  \"memory_bytes\": %zu,\n  \"l2_bytes\": %zu,\n  \"sms\": %d,\n", size_t(prop.totalGlobalMem), l2,
              prop.multiProcessorCount);

  // HBM copy bandwidth: bytes read + written per second.
  {
    const size_t n = size_t(4) << 30;
    void *a = nullptr, *b = nullptr;
    CHECK_CUDA(cudaMalloc(&a, n));
    CHECK_CUDA(cudaMalloc(&b, n));
    CHECK_CUDA(cudaMemset(a, 1, n));
    CHECK_CUDA(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    std::vector<double> gbps;
    for (int r = 0; r < 10; ++r) {
      CHECK_CUDA(cudaEventRecord(e0));
      CHECK_CUDA(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
      CHECK_CUDA(cudaEventRecord(e1));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      gbps.push_back(2.0 * double(n) / (double(t) * 1e6));
    }
    std::printf("  \"hbm_copy_gbps\": %.1f,\n", median(gbps));
    CHECK_CUDA(cudaFree(a));
    CHECK_CUDA(cudaFree(b));
  }

  std::printf("  \"layers\": [\n");
  double stream_w = -1, stream_gbps = 0;
  for (size_t si = 0; si < shapes.size(); ++si) {
    const shape& s = shapes[si];
    layer_set L = make_layers(layer_gemms(s), rotate_bytes);
    std::printf("    {\"model\": \"%s\", \"tp\": %d, \"weight_bytes\": %zu, \"copies\": %d, \"points\": [", s.name,
                s.tp, L.weight_bytes, L.copies);
    for (size_t bi = 0; bi < batches.size(); ++bi) {
      const long b = batches[bi];
      const double ms = time_layer_ms(h, L, b, x, y, b >= 2048 ? 5 : 15);
      std::printf("%s{\"batch\": %ld, \"ms\": %.5f}", bi ? ", " : "", b, ms);
      std::fflush(stdout);
    }
    std::printf("]}%s\n", si + 1 < shapes.size() ? "," : "");
    // Power while streaming weights at batch 1 (the 70B layer set), sampled mid-run.
    if (std::string(s.name) == "llama-3.1-70b" && idle_w > 0) {
      double ms_total = 0;
      int iters = 0;
      auto t0 = std::chrono::steady_clock::now();
      std::vector<double> samples;
      std::thread sampler([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        for (int i = 0; i < 5; ++i) {
          samples.push_back(power_w());
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
        }
      });
      while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(4000)) {
        ms_total += time_layer_ms(h, L, 1, x, y, 3);
        ++iters;
      }
      sampler.join();
      stream_gbps = double(L.weight_bytes) / (ms_total / iters * 1e6);
      stream_w = median(samples);
    }
    free_layers(L);
  }
  std::printf("  ],\n");

  // LM head at small batches.
  std::printf("  \"lm_head\": [");
  for (size_t si = 0; si < shapes.size(); ++si) {
    const shape& s = shapes[si];
    layer_set L = make_layers({{s.hidden, s.vocab / s.tp}}, rotate_bytes);
    std::printf("%s{\"model\": \"%s\", \"tp\": %d, \"points\": [", si ? ", " : "", s.name, s.tp);
    const long lb[] = {1, 8, 64, 512};
    for (int i = 0; i < 4; ++i)
      std::printf("%s{\"batch\": %ld, \"ms\": %.5f}", i ? ", " : "", lb[i], time_layer_ms(h, L, lb[i], x, y, 10));
    std::printf("]}");
    free_layers(L);
  }
  std::printf("],\n");
  std::printf("  \"power\": {\"idle_w\": %.1f, \"streaming_w\": %.1f, \"streaming_gbps\": %.1f}\n}\n", idle_w,
              stream_w, stream_gbps);
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(y));
  CHECK_CUBLAS(cublasDestroy(h));
  return 0;
}
