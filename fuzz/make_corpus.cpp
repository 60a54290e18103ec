// Writes a seed corpus for the fuzz targets: valid messages of every kind (several seeds and
// shapes) into DIR/<kind>/ and all of them into DIR/any/.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "transport/samples.hpp"

using namespace pnmkv::transport;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  fs::path root = argv[1];
  for (size_t i = 0; i < msg_kind_count; ++i) {
    auto kind = static_cast<msg_kind>(i);
    fs::create_directories(root / to_string(kind));
    fs::create_directories(root / "any");
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      sample_shape s;
      s.head_dim = seed % 2 ? 64 : 128;
      s.page_tokens = 4;
      s.pages = 3;
      auto bytes = sample_message(kind, seed, s).finish();
      std::string name = "seed" + std::to_string(seed);
      for (auto dir : {root / to_string(kind), root / "any"}) {
        std::ofstream f(dir / (std::string(to_string(kind)) + "_" + name), std::ios::binary);
        f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      }
    }
  }
  std::printf("corpus written to %s\n", root.c_str());
  return 0;
}
