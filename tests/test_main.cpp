// main() of every test binary: GoogleTest, after applying PNMKV_SIMD_TARGET like the pnmkv
// command does, so `PNMKV_SIMD_TARGET=AVX2 ./pnmkv test` runs the whole suite (clusters
// included) on the AVX2 kernels of a machine with AVX-512.
#include <gtest/gtest.h>

#include <cstdio>

#include "core/simd_target.hpp"

int main(int argc, char** argv) {
  if (pnmkv::status s = pnmkv::apply_kernel_target_from_env(); !s) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
