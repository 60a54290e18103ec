// Reads the repository's own sources for the layering guard: which project folders a file
// includes, and how long its function bodies are. Plain text scanning, no compiler: good
// enough for code written in this repository's style, and exact about what it counts
// (stated per function below).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pnmkv::layering {

// The project folders `text` includes: `#include "X/..."` and Cap'n Proto `import "/X/..."`
// give X. System headers (<...>) and headers without a folder are not counted.
struct include_ref {
  std::string folder;
  std::string target;  // the whole path as written
  uint32_t line = 0;
};
std::vector<include_ref> project_includes(const std::string& text);

// Function and lambda bodies: a `{` that closes a parameter list (after `)` and optional
// qualifiers: const, noexcept, override, final, mutable, a trailing return type, or a
// constructor's member initialisers), not one of if/for/while/switch/catch. Lines counted
// from the line of `{` to the line of its `}`, both included. Comments, string and
// character literals are skipped. Nested bodies (lambdas inside functions) are reported
// too, each with its own length; the outer one includes them.
struct body {
  std::string name;  // the identifier before the parameter list ("lambda" for `](...)`)
  uint32_t first_line = 0, last_line = 0;
  uint32_t lines() const { return last_line - first_line + 1; }
};
std::vector<body> function_bodies(const std::string& text);

}  // namespace pnmkv::layering
