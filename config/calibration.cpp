// Calibration file reading (format "pnmkv-calibration/1", described in sim/README.md).
// Strict on the values it knows (type and range), tolerant of extra top-level fields so a
// newer writer can add context without breaking older readers.
#include "config/calibration.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.hpp"

namespace pnmkv {

namespace {

// Each value's allowed range is its sim.<name> key's, from the schema (schema_sim.cpp): a
// file may say what the config may, nothing else.
struct field {
  const char* name;
  calibrated_value calibration::*member;
  double calibration_keys::*key;  // the sim.<name> value of the spec

  const config_key& schema_key() const {
    const config_key* k = find_config_key(std::string("sim.") + name);
    PNMKV_CHECK(k != nullptr && k->type == config_type::number, "calibration value without a sim.", name,
                " number key in the schema");
    return *k;
  }
};

const field fields[] = {
    {"steady_hit_fraction", &calibration::steady_hit_fraction, &calibration_keys::steady_hit_fraction},
    {"steady_set_fraction", &calibration::steady_set_fraction, &calibration_keys::steady_set_fraction},
    {"steady_churn_fraction", &calibration::steady_churn_fraction, &calibration_keys::steady_churn_fraction},
    {"steady_reeval_steps", &calibration::steady_reeval_steps, &calibration_keys::steady_reeval_steps},
    {"selection_overlap", &calibration::selection_overlap, &calibration_keys::selection_overlap},
    {"recall_hit_fraction", &calibration::recall_hit_fraction, &calibration_keys::recall_hit_fraction},
    {"selection_spread", &calibration::selection_spread, &calibration_keys::selection_spread},
    {"search_rescored_per_selected", &calibration::search_rescored_per_selected,
     &calibration_keys::search_rescored_per_selected},
};

}  // namespace

std::vector<std::pair<std::string, const calibrated_value*>> calibration::entries() const {
  std::vector<std::pair<std::string, const calibrated_value*>> out;
  for (const auto& f : fields) out.emplace_back(f.name, &(this->*(f.member)));
  return out;
}

std::string calibration::describe() const {
  std::ostringstream os;
  for (const auto& [name, v] : entries()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4g", v->value);
    os << name << " = " << buf << " (" << v->source << ")\n";
  }
  return os.str();
}

result<calibration> calibration_from_spec(const sim_section& sim) {
  calibration c;
  for (const auto& f : fields) {
    (c.*(f.member)).value = sim.calibration.*(f.key);
    (c.*(f.member)).source = std::string("config sim.") + f.name;
  }
  if (sim.calibration_file.empty()) return c;
  return load_calibration(sim.calibration_file, std::move(c));
}

result<calibration> load_calibration(const std::string& file, calibration base) {
  std::ifstream in(file);
  if (!in) return status{errc::io, "calibration file '" + file + "' cannot be read"};
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    return status{errc::parse, "calibration file '" + file + "' is not valid JSON: " + e.what()};
  }
  const std::string where = "calibration file '" + file + "'";
  if (!j.is_object()) return status{errc::parse, where + " must be a JSON object"};
  if (!j.contains("format") || !j["format"].is_string() ||
      j["format"].get<std::string>() != "pnmkv-calibration/1")
    return status{errc::parse, where + ": \"format\" must be \"pnmkv-calibration/1\""};
  if (!j.contains("values") || !j["values"].is_object())
    return status{errc::parse, where + ": \"values\" must be an object of named values"};
  for (const auto& [name, v] : j["values"].items()) {
    const field* f = nullptr;
    for (const auto& cand : fields)
      if (name == cand.name) f = &cand;
    if (!f) {
      std::string allowed;
      for (const auto& cand : fields) allowed += (allowed.empty() ? "" : ", ") + std::string(cand.name);
      return status{errc::invalid_argument,
                    where + ": unknown value '" + name + "'; allowed: " + allowed};
    }
    double x = 0;
    uint64_t samples = 0;
    if (v.is_number()) {
      x = v.get<double>();
    } else if (v.is_object() && v.contains("value") && v["value"].is_number()) {
      x = v["value"].get<double>();
      if (v.contains("samples") && v["samples"].is_number_unsigned())
        samples = v["samples"].get<uint64_t>();
    } else {
      return status{errc::parse, where + ": values." + name +
                                     " must be a number or {\"value\": number, \"samples\": n}"};
    }
    const config_key& range = f->schema_key();
    if (!std::isfinite(x) || x < range.min || x > range.max) {
      char buf[160];
      std::snprintf(buf, sizeof buf, ": values.%s = %g is outside [%g, %g]", f->name, x, range.min, range.max);
      return status{errc::invalid_argument, where + buf};
    }
    calibrated_value& dst = base.*(f->member);
    dst.value = x;
    dst.source = "calibration " + file + (samples ? " (" + std::to_string(samples) + " samples)" : "");
  }
  if (j.contains("search_points")) {
    const auto& sp = j["search_points"];
    if (!sp.is_array() || sp.size() > 100000)
      return status{errc::parse, where + ": \"search_points\" must be a list of at most 100000 points"};
    base.search_points.clear();
    for (size_t i = 0; i < sp.size(); ++i) {
      const auto& o = sp[i];
      const std::string at = where + ": search_points[" + std::to_string(i) + "]";
      if (!o.is_object()) return status{errc::parse, at + " must be an object"};
      search_point p;
      try {
        p.pages = o.at("pages").get<double>();
        p.selected_fraction = o.at("selected_fraction").get<double>();
        p.heads_scored = o.at("heads_scored").get<uint32_t>();
        const std::string aggregation = o.at("aggregation").get<std::string>();
        const auto agg = value_of(gqa_aggregation_names, aggregation);
        if (!agg) {
          std::string allowed;
          for (const auto& n : names_of(gqa_aggregation_names)) allowed += (allowed.empty() ? "" : ", ") + n;
          return status{errc::invalid_argument, at + ": aggregation '" + aggregation + "' is unknown; allowed: " + allowed};
        }
        p.aggregation = *agg;
        p.workload = o.at("workload").get<std::string>();
        p.rescored_per_selected = o.at("rescored_per_selected").get<double>();
        p.samples = o.value("samples", uint64_t(0));
      } catch (const std::exception&) {
        return status{errc::parse, at + " needs pages, selected_fraction, heads_scored (numbers), aggregation "
                                        "(max|sum), workload (synthetic|trace) and rescored_per_selected"};
      }
      if (std::string why = search_point_error(p); !why.empty())
        return status{errc::invalid_argument, at + ": " + why};
      base.search_points.push_back(std::move(p));
    }
  }
  base.file = file;
  if (j.contains("measured") && j["measured"].is_object()) {
    const auto& m = j["measured"];
    if (m.contains("model") && m["model"].is_string()) base.measured_model = m["model"].get<std::string>();
    if (m.contains("context_tokens") && m["context_tokens"].is_number())
      base.measured_context_tokens = m["context_tokens"].get<double>();
    if (m.contains("budget_tokens") && m["budget_tokens"].is_number())
      base.measured_budget_tokens = m["budget_tokens"].get<double>();
    if (m.contains("search") && m["search"].is_object()) {
      const auto& s = m["search"];
      if (s.contains("pages_per_search_min") && s["pages_per_search_min"].is_number())
        base.measured_search_pages_min = s["pages_per_search_min"].get<double>();
      if (s.contains("pages_per_search_max") && s["pages_per_search_max"].is_number())
        base.measured_search_pages_max = s["pages_per_search_max"].get<double>();
    }
  }
  return base;
}

}  // namespace pnmkv
