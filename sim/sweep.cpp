// Sweep files and running them (see sweep.hpp).
#include "sim/sweep.hpp"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "config/config.hpp"

namespace pnmkv {

namespace fs = std::filesystem;

size_t sweep_spec::points() const {
  size_t n = 1;
  for (const auto& a : axes) n *= a.values.size();
  return n;
}

std::vector<std::string> sweep_spec::point_overrides(size_t i) const {
  std::vector<std::string> out;
  std::vector<size_t> idx(axes.size());
  for (size_t k = axes.size(); k-- > 0;) {
    idx[k] = i % axes[k].values.size();
    i /= axes[k].values.size();
  }
  for (size_t k = 0; k < axes.size(); ++k) {
    out.push_back(axes[k].key + "=" + axes[k].values[idx[k]]);
    if (!axes[k].with.empty())
      for (const auto& w : axes[k].with[idx[k]]) out.push_back(w);
  }
  return out;
}

std::vector<std::string> resolve_path_overrides(const std::vector<std::string>& overrides,
                                                const std::vector<std::string>& dirs) {
  std::vector<std::string> out;
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    const config_key* k = eq == std::string::npos ? nullptr : find_config_key(o.substr(0, eq));
    if (!k || k->type != config_type::path) {
      out.push_back(o);
      continue;
    }
    const std::string v = o.substr(eq + 1);
    std::string resolved = v;
    if (!v.empty() && fs::path(v).is_relative() && !fs::exists(v))
      for (const auto& d : dirs)
        if (fs::exists(fs::path(d) / v)) {
          resolved = (fs::path(d) / v).lexically_normal().string();
          break;
        }
    out.push_back(o.substr(0, eq) + "=" + resolved);
  }
  return out;
}

namespace {
std::vector<std::string> search_dirs(const std::string& sweep_file, const std::string& config_file) {
  std::vector<std::string> dirs;
  for (const auto& f : {sweep_file, config_file}) {
    if (f.empty()) continue;
    fs::path d = fs::path(f).parent_path();
    dirs.push_back(d.string());
    dirs.push_back(d.parent_path().string());
  }
  return dirs;
}
}  // namespace

result<sweep_spec> load_sweep(const std::string& file) {
  sweep_spec s;
  s.file = file;
  const std::string where = "sweep file '" + file + "'";
  YAML::Node root;
  try {
    if (!fs::exists(file)) return status{errc::io, where + " does not exist"};
    root = YAML::LoadFile(file);
  } catch (const std::exception& e) {
    return status{errc::parse, where + " is not valid YAML: " + e.what()};
  }
  if (!root.IsMap()) return status{errc::parse, where + " must be a map"};
  try {
    for (const auto& kv : root) {
      const auto k = kv.first.as<std::string>();
      if (k != "name" && k != "config" && k != "set" && k != "axes")
        return status{errc::invalid_argument, where + ": unknown key '" + k + "'; allowed: name, config, set, axes"};
    }
    s.name = root["name"] ? root["name"].as<std::string>() : fs::path(file).stem().string();
    if (root["config"]) {
      fs::path c = root["config"].as<std::string>();
      if (c.is_relative()) c = fs::path(file).parent_path() / c;
      s.config_file = c.lexically_normal().string();
    }
    if (root["set"]) {
      if (!root["set"].IsSequence()) return status{errc::parse, where + ": set must be a list of key=value"};
      for (const auto& v : root["set"]) s.set.push_back(v.as<std::string>());
    }
    if (!root["axes"] || !root["axes"].IsSequence())
      return status{errc::parse, where + ": axes must be a list of {key, values, with}"};
    for (const auto& a : root["axes"]) {
      sweep_axis ax;
      if (!a.IsMap() || !a["key"] || !a["values"] || !a["values"].IsSequence())
        return status{errc::parse, where + ": each axis needs key and a list of values"};
      for (const auto& kv : a) {
        const auto k = kv.first.as<std::string>();
        if (k != "key" && k != "values" && k != "with")
          return status{errc::invalid_argument, where + ": unknown axis field '" + k + "'; allowed: key, values, with"};
      }
      ax.key = a["key"].as<std::string>();
      if (!find_config_key(ax.key))
        return status{errc::invalid_argument, where + ": axis key '" + ax.key +
                                                  "' is not a config key (`pnmkv config --keys`)"};
      for (const auto& v : a["values"]) ax.values.push_back(v.as<std::string>());
      if (ax.values.empty()) return status{errc::invalid_argument, where + ": axis " + ax.key + " has no values"};
      if (a["with"]) {
        if (!a["with"].IsSequence() || a["with"].size() != ax.values.size())
          return status{errc::invalid_argument,
                        where + ": axis " + ax.key + ": with must list one override list per value"};
        for (const auto& w : a["with"]) {
          std::vector<std::string> list;
          if (w.IsSequence())
            for (const auto& x : w) list.push_back(x.as<std::string>());
          else if (!w.IsNull())
            list.push_back(w.as<std::string>());
          ax.with.push_back(std::move(list));
        }
      }
      s.axes.push_back(std::move(ax));
    }
  } catch (const std::exception& e) {
    return status{errc::parse, where + ": " + e.what()};
  }
  if (s.points() > 100000) return status{errc::capacity, where + " has more than 100000 points"};
  return s;
}

std::vector<sweep_point> run_sweep(const sweep_spec& spec, const std::string& config_file,
                                   const std::vector<std::string>& extra,
                                   const std::function<void(size_t, size_t)>& progress) {
  const std::string base = config_file.empty() ? spec.config_file : config_file;
  const auto dirs = search_dirs(spec.file, base);
  std::vector<sweep_point> out(spec.points());
  for (size_t i = 0; i < out.size(); ++i) {
    sweep_point& p = out[i];
    p.overrides = spec.set;
    p.overrides.insert(p.overrides.end(), extra.begin(), extra.end());
    const auto pt = spec.point_overrides(i);
    p.overrides.insert(p.overrides.end(), pt.begin(), pt.end());
    p.overrides = resolve_path_overrides(p.overrides, dirs);
    auto cfg = load_config(base.empty() ? default_config_path() : base, p.overrides);
    if (!cfg) {
      p.error = cfg.error().to_string();
    } else if (auto setup = make_sim_setup(*cfg); !setup) {
      p.error = setup.error().to_string();
    } else if (auto r = simulate(*setup); !r) {
      p.error = r.error().to_string();
    } else {
      p.ok = true;
      p.result = std::move(r).value();
    }
    if (progress) progress(i + 1, out.size());
  }
  return out;
}

std::string sweep_csv(const std::vector<sweep_point>& points) {
  std::ostringstream os;
  os << sim_result::csv_header() << "\n";
  for (const auto& p : points)
    if (p.ok) os << p.result.csv_row() << "\n";
  return os.str();
}

std::string sweep_json(const sweep_spec& spec, const std::vector<sweep_point>& points, double wall_s) {
  nlohmann::ordered_json j;
  j["sweep"] = {{"name", spec.name}, {"file", spec.file}, {"config", spec.config_file},
                {"points", points.size()}, {"wall_s", wall_s}};
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const auto& p : points) {
    nlohmann::ordered_json e;
    e["overrides"] = p.overrides;
    e["ok"] = p.ok;
    if (p.ok) {
      auto r = nlohmann::ordered_json::parse(p.result.to_json(false));
      r.erase("config");  // the overrides and the base file reproduce it
      e["result"] = r;
    } else {
      e["error"] = p.error;
    }
    arr.push_back(std::move(e));
  }
  j["points"] = arr;
  return j.dump(1);
}

}  // namespace pnmkv
