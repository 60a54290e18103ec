// What the simulator's tests share: the repository's config and model files, and a setup
// (or a refusal recorded as a test failure) from the default config plus --set overrides.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "sim/simulator.hpp"

namespace pnmkv::sim_fixture {

inline const std::string root = PNMKV_SOURCE_DIR;
inline const std::string default_file = root + "/cluster_configs/default.yaml";
inline const std::string m8 = root + "/cluster_configs/models/llama-3.1-8b.yaml";
inline const std::string m405 = root + "/cluster_configs/models/llama-3.1-405b.yaml";

inline std::shared_ptr<const sim_setup> setup_of(const std::vector<std::string>& sets) {
  auto cfg = load_config(default_file, sets);
  EXPECT_TRUE(cfg) << cfg.error().to_string();
  if (!cfg) return nullptr;
  auto s = make_sim_setup(*cfg);
  EXPECT_TRUE(s) << s.error().to_string();
  return s ? *s : nullptr;
}

}  // namespace pnmkv::sim_fixture
