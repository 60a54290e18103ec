#include "tests/layering/source_scan.hpp"

#include <cctype>
#include <cstring>
#include <regex>
#include <sstream>

namespace pnmkv::layering {

namespace {

bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Comments and the contents of string and character literals become spaces; newlines stay,
// so line numbers and brace positions are those of the original text.
std::string code_only(const std::string& t) {
  std::string o = t;
  size_t i = 0;
  const size_t n = t.size();
  auto blank = [&](size_t from, size_t to) {
    for (size_t k = from; k < to && k < n; ++k)
      if (o[k] != '\n') o[k] = ' ';
  };
  while (i < n) {
    if (t.compare(i, 2, "//") == 0) {
      size_t e = t.find('\n', i);
      if (e == std::string::npos) e = n;
      blank(i, e);
      i = e;
    } else if (t.compare(i, 2, "/*") == 0) {
      size_t e = t.find("*/", i + 2);
      e = e == std::string::npos ? n : e + 2;
      blank(i, e);
      i = e;
    } else if (t[i] == 'R' && i + 1 < n && t[i + 1] == '"' && (i == 0 || !ident_char(t[i - 1]))) {
      size_t open = t.find('(', i + 2);
      if (open == std::string::npos) return o;
      const std::string end = ")" + t.substr(i + 2, open - i - 2) + "\"";
      size_t e = t.find(end, open);
      e = e == std::string::npos ? n : e + end.size();
      blank(i + 1, e);
      i = e;
    } else if (t[i] == '"' || (t[i] == '\'' && (i == 0 || !std::isxdigit(static_cast<unsigned char>(t[i - 1]))))) {
      // A quote after a hex digit is a digit separator (1'000), not a character literal.
      const char q = t[i];
      size_t k = i + 1;
      while (k < n && t[k] != q && t[k] != '\n') k += t[k] == '\\' ? 2 : 1;
      blank(i + 1, k);
      i = k + 1;
    } else {
      ++i;
    }
  }
  return o;
}

size_t skip_space_back(const std::string& s, size_t pos) {  // pos: one past; returns one past
  while (pos > 0 && std::isspace(static_cast<unsigned char>(s[pos - 1]))) --pos;
  return pos;
}

std::string word_before(const std::string& s, size_t pos) {  // pos: one past its end
  size_t b = pos;
  while (b > 0 && ident_char(s[b - 1])) --b;
  return s.substr(b, pos - b);
}

// Whether the `{` at `at` opens a function or lambda body, and the name before its
// parameter list.
bool opens_function(const std::string& s, size_t at, std::string& name) {
  static const char* const qualifiers[] = {"const", "noexcept", "override", "final", "mutable"};
  size_t p = skip_space_back(s, at);
  for (int guard = 0; guard < 8 && p > 0; ++guard) {
    const std::string w = word_before(s, p);
    bool qualifier = false;
    for (const char* q : qualifiers) qualifier = qualifier || w == q;
    if (qualifier) {
      p = skip_space_back(s, p - w.size());
      continue;
    }
    if (s[p - 1] == ']') {
      name = "lambda";
      return true;
    }
    if (s[p - 1] == ')') break;
    // A trailing return type: `) -> type {`.
    size_t b = p;
    while (b > 0 && (ident_char(s[b - 1]) || std::strchr(":<>,*& \n\t", s[b - 1]))) --b;
    // The walk stopped at the '-' of "->" (its '>' looks like a template's).
    if (b >= 1 && b < p && s[b - 1] == '-' && s[b] == '>') {
      p = skip_space_back(s, b - 1);
      continue;
    }
    return false;
  }
  if (p == 0 || s[p - 1] != ')') return false;
  int depth = 0;
  size_t k = p;
  while (k > 0) {
    --k;
    if (s[k] == ')') ++depth;
    if (s[k] == '(' && --depth == 0) break;
  }
  if (depth != 0) return false;
  const size_t before = skip_space_back(s, k);
  if (before > 0 && s[before - 1] == ']') {
    name = "lambda";
    return true;
  }
  name = word_before(s, before);
  for (const char* kw : {"if", "for", "while", "switch", "catch", "return", ""})
    if (name == kw) return false;
  return true;
}

}  // namespace

std::vector<include_ref> project_includes(const std::string& text) {
  static const std::regex inc(R"re(^\s*#\s*include\s+"([a-z_0-9]+)/([^"]*)")re");
  static const std::regex imp(R"re(\bimport\s+"/([a-z_0-9]+)/([^"]*)")re");
  std::vector<include_ref> out;
  std::istringstream in(text);
  std::string line;
  uint32_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::smatch m;
    if (std::regex_search(line, m, inc) || std::regex_search(line, m, imp))
      out.push_back({m[1].str(), m[1].str() + "/" + m[2].str(), n});
  }
  return out;
}

std::vector<body> function_bodies(const std::string& text) {
  const std::string s = code_only(text);
  struct open {
    bool function;
    std::string name;
    uint32_t line;
  };
  std::vector<open> stack;
  std::vector<body> out;
  uint32_t line = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n') ++line;
    if (s[i] == '{') {
      std::string name;
      const bool f = opens_function(s, i, name);
      stack.push_back({f, name, line});
    } else if (s[i] == '}' && !stack.empty()) {
      if (stack.back().function) out.push_back({stack.back().name, stack.back().line, line});
      stack.pop_back();
    }
  }
  return out;
}

}  // namespace pnmkv::layering
