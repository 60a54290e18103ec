// The layering guard (issue 10's guard rails): the folders form one import order,
//
//   core ← model ← config ← schedulers ← sim ─────┐
//   core ← trace (KV trace readers) ← actors, apps, bench
//                        ↖ transport            ├── apps
//             schedulers, transport ← actors ───┘
//
// schedulers/ (policy) and transport/ (the wire) sit side by side above config/; actors/
// builds on both; sim/ on schedulers/ only (the simulator uses no fabric, and actors/ never
// imports sim/). And no function in the policy and actor floors grows past a limit a reader
// can hold in their head. Both are read from the sources, so the suite fails the moment an
// include runs the wrong way, before anyone has to notice it in review.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "tests/layering/source_scan.hpp"

namespace pnmkv::layering {
namespace {

namespace fs = std::filesystem;

// What each folder may include besides itself. tests/ may include anything.
const std::map<std::string, std::set<std::string>>& allowed_imports() {
  static const std::map<std::string, std::set<std::string>> rules = {
      {"core", {}},
      {"trace", {"core"}},
      {"model", {"core"}},
      {"config", {"core", "model"}},
      {"schedulers", {"core", "model", "config"}},
      {"transport", {"core", "model", "config"}},
      {"sim", {"core", "model", "config", "schedulers"}},
      {"actors", {"core", "trace", "model", "config", "schedulers", "transport"}},
      {"bench", {"core", "trace", "model", "config", "schedulers", "transport"}},
      {"fuzz", {"core", "trace", "model", "config", "transport"}},
      {"apps", {"core", "trace", "model", "config", "schedulers", "transport", "sim", "actors"}},
  };
  return rules;
}

bool allowed(const std::string& from, const std::string& to) {
  if (from == to) return true;
  auto it = allowed_imports().find(from);
  return it != allowed_imports().end() && it->second.count(to) > 0;
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool source_file(const fs::path& p) {
  const std::string e = p.extension().string();
  return e == ".cpp" || e == ".hpp" || e == ".capnp" || e == ".cu" || e == ".h";
}

// Every source file of a folder (recursively), relative to the repository.
std::vector<fs::path> sources_of(const std::string& folder) {
  std::vector<fs::path> out;
  const fs::path root = fs::path(PNMKV_SOURCE_DIR) / folder;
  if (!fs::exists(root)) return out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && source_file(e.path())) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::string repo_path(const fs::path& p) {
  return fs::relative(p, fs::path(PNMKV_SOURCE_DIR)).string();
}

TEST(layering, the_rules_are_an_order_without_cycles) {
  // Every allowed edge points to a folder with strictly fewer allowed imports, and no
  // folder allows one that allows it back.
  for (const auto& [from, tos] : allowed_imports())
    for (const std::string& to : tos) {
      ASSERT_TRUE(allowed_imports().count(to)) << from << " -> unknown folder " << to;
      EXPECT_LT(allowed_imports().at(to).size(), tos.size()) << from << " -> " << to;
      EXPECT_FALSE(allowed(to, from)) << from << " <-> " << to;
    }
  EXPECT_FALSE(allowed("actors", "sim"));
  EXPECT_FALSE(allowed("sim", "actors"));
  EXPECT_FALSE(allowed("core", "model"));
  EXPECT_FALSE(allowed("schedulers", "transport"));
}

TEST(layering, the_scanner_sees_includes_and_imports) {
  const std::string text =
      "#include <vector>\n"
      "#include \"core/status.hpp\"\n"
      "  #  include \"sim/step_model.hpp\"  // a comment\n"
      "#include \"local.hpp\"\n"
      "using X = import \"/transport/wire.capnp\".Envelope;\n";
  auto refs = project_includes(text);
  ASSERT_EQ(refs.size(), 3u);
  EXPECT_EQ(refs[0].folder, "core");
  EXPECT_EQ(refs[1].folder, "sim");
  EXPECT_EQ(refs[1].line, 3u);
  EXPECT_EQ(refs[2].folder, "transport");
}

TEST(layering, no_include_runs_the_wrong_way) {
  size_t files = 0;
  std::vector<std::string> wrong;
  for (const auto& [folder, rules] : allowed_imports()) {
    (void)rules;
    for (const fs::path& p : sources_of(folder)) {
      ++files;
      for (const include_ref& r : project_includes(read(p))) {
        if (!allowed_imports().count(r.folder)) continue;  // e.g. "hwy/", "caf/", "tests/"
        if (!allowed(folder, r.folder))
          wrong.push_back(repo_path(p) + ":" + std::to_string(r.line) + " includes " + r.target +
                          " (" + folder + "/ may include only itself and lower floors)");
      }
    }
  }
  EXPECT_GT(files, 100u) << "the scan found too few sources under " << PNMKV_SOURCE_DIR;
  std::string all;
  for (const std::string& w : wrong) all += "\n  " + w;
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " include(s) run the wrong way:" << all;
}

TEST(layering, the_scanner_measures_function_bodies) {
  const std::string text =
      "int f(int a) {\n"           // 1
      "  if (a) {\n"               // 2: not a function
      "    return 1;\n"            // 3
      "  }\n"                      // 4
      "  auto g = [&](int b) {\n"  // 5: lambda
      "    // } a brace in a comment\n"
      "    const char* s = \"}{\";\n"
      "    return b;\n"
      "  };\n"                     // 9
      "  for (int i = 0; i < 3; ++i) { a += i; }\n"
      "  return g(a);\n"
      "}\n"                        // 12
      "struct s { int x() const { return 1; } };\n"
      "auto h() -> int {\n"
      "  return 2;\n"
      "}\n";
  auto b = function_bodies(text);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[0].name, "lambda");
  EXPECT_EQ(b[0].first_line, 5u);
  EXPECT_EQ(b[0].lines(), 5u);
  EXPECT_EQ(b[1].name, "f");
  EXPECT_EQ(b[1].lines(), 12u);
  EXPECT_EQ(b[2].name, "x");
  EXPECT_EQ(b[3].name, "h");
  EXPECT_EQ(b[3].lines(), 3u);
}

// The limit for functions (and handlers: lambdas are measured alike) in the floors where a
// newcomer reads the system's behaviour. None is longer today; a function that must be
// longer gets an exception here with its reason.
constexpr uint32_t function_lines_max = 120;

TEST(layering, no_long_functions_in_actors_sim_schedulers) {
  std::vector<std::string> long_ones;
  for (const char* folder : {"actors", "sim", "schedulers"})
    for (const fs::path& p : sources_of(folder))
      for (const body& b : function_bodies(read(p))) {
        if (b.lines() <= function_lines_max) continue;
        long_ones.push_back(repo_path(p) + ":" + std::to_string(b.first_line) + " " + b.name + " (" +
                              std::to_string(b.lines()) + " lines)");
      }
  std::string all;
  for (const std::string& l : long_ones) all += "\n  " + l;
  EXPECT_TRUE(long_ones.empty()) << long_ones.size() << " function(s) over " << function_lines_max
                                 << " lines:" << all;
}

// Every Markdown file the code, configs, scripts and READMEs cite must be in the
// repository: at the path as written, from the repository root or from the citing file's
// folder. A design map only a past developer has is no map.
bool cited_file_exists(const fs::path& citing, const std::string& cited) {
  const fs::path root(PNMKV_SOURCE_DIR);
  return fs::exists(root / cited) || fs::exists(citing.parent_path() / cited);
}

TEST(layering, every_cited_document_is_in_the_repository) {
  static const std::regex md(R"re((^|[^A-Za-z0-9_./-])([A-Za-z0-9_./-]*[A-Za-z0-9_-]+\.md)\b)re");
  // (file, what it names): not citations.
  static const std::set<std::pair<std::string, std::string>> not_citations = {
      {"experiments/plot.py", "headline.md"},  // the name of the file it writes
      {"tests/layering/layering_test.cpp", "headline.md"},  // this list
  };
  const fs::path root(PNMKV_SOURCE_DIR);
  size_t checked = 0;
  std::vector<std::string> missing;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const std::string rel = repo_path(e.path());
    if (!e.is_regular_file() || rel.rfind("build", 0) == 0 || rel.rfind(".git", 0) == 0 ||
        rel.rfind("experiments/results/", 0) == 0)
      continue;
    const std::string ext = e.path().extension().string();
    if (ext != ".cpp" && ext != ".hpp" && ext != ".capnp" && ext != ".md" && ext != ".yaml" &&
        ext != ".py" && ext != ".sh" && ext != ".txt" && e.path().filename() != "pnmkv" &&
        rel.rfind(".ci/", 0) != 0)
      continue;
    std::istringstream in(read(e.path()));
    std::string line;
    for (uint32_t n = 1; std::getline(in, line); ++n)
      for (std::sregex_iterator it(line.begin(), line.end(), md), end; it != end; ++it) {
        const std::string cited = (*it)[2].str();
        if (cited.find("://") != std::string::npos || not_citations.count({rel, cited})) continue;
        ++checked;
        if (!cited_file_exists(e.path(), cited))
          missing.push_back(rel + ":" + std::to_string(n) + " cites " + cited);
      }
  }
  EXPECT_GT(checked, 10u);
  std::string all;
  for (const std::string& m : missing) all += "\n  " + m;
  EXPECT_TRUE(missing.empty()) << missing.size() << " citation(s) of files not in the repository "
                               << "(write the path from the repository root, e.g. docs/DESIGN.md):" << all;
}

}  // namespace
}  // namespace pnmkv::layering
