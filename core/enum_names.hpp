// Name tables of the enums a configuration key chooses (gqa_aggregation, run_mode,
// workload_arrivals, ...): one table per enum, declared next to the enum, read both ways.
// The config schema lists a table's names as its key's allowed values, and config/spec.cpp
// looks the validated text up in the same table, so each name is written once.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace pnmkv {

template <class E>
struct enum_name {
  const char* name;
  E value;
};

// The name of `value` ("?" for a value outside the enum's named ones).
template <class E, size_t N>
const char* name_of(const enum_name<E> (&table)[N], E value) {
  for (const auto& e : table)
    if (e.value == value) return e.name;
  return "?";
}

// The value named `text`, or none.
template <class E, size_t N>
std::optional<E> value_of(const enum_name<E> (&table)[N], const std::string& text) {
  for (const auto& e : table)
    if (text == e.name) return e.value;
  return std::nullopt;
}

// Every name, in the table's order (a choice key's allowed values).
template <class E, size_t N>
std::vector<std::string> names_of(const enum_name<E> (&table)[N]) {
  std::vector<std::string> out;
  for (const auto& e : table) out.emplace_back(e.name);
  return out;
}

}  // namespace pnmkv
