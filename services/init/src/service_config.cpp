#include "services/init/service_config.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

namespace ralph::init {
namespace {

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool ValidName(const std::string& name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

}  // namespace

Result<std::vector<ServiceSpec>> ParseServicesConf(std::string_view text) {
  std::vector<ServiceSpec> services;
  std::set<std::string> names;
  std::istringstream lines{std::string(text)};
  int line_number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_number;
    std::istringstream words(line);
    std::string name;
    if (!(words >> name) || name[0] == '#') continue;
    auto fail = [&](std::string what) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("services.conf line {}: {}", line_number, what));
    };
    if (!ValidName(name)) return fail(fmt::format("'{}' is not a service name", name));
    if (!names.insert(name).second) return fail(fmt::format("service {} is defined twice", name));
    ServiceSpec spec;
    spec.name = name;
    for (std::string word; words >> word;) {
      size_t eq = word.find('=');
      if (eq == std::string::npos) return fail(fmt::format("'{}' is not key=value", word));
      std::string key = word.substr(0, eq);
      std::string value = word.substr(eq + 1);
      if (key == "exec") {
        if (value.empty() || value[0] != '/') {
          return fail(fmt::format("exec={} is not an absolute path", value));
        }
        spec.exec = value;
      } else if (key == "args") {
        spec.args = SplitList(value);
      } else if (key == "after") {
        spec.after = SplitList(value);
      } else if (key == "type") {
        if (value != "simple" && value != "oneshot") {
          return fail(fmt::format("type={} is not simple or oneshot", value));
        }
        spec.oneshot = value == "oneshot";
      } else if (key == "required") {
        if (value != "yes" && value != "no") {
          return fail(fmt::format("required={} is not yes or no", value));
        }
        spec.required = value == "yes";
      } else {
        return fail(fmt::format("unknown key '{}'", key));
      }
    }
    if (spec.exec.empty()) return fail(fmt::format("service {} has no exec=", name));
    services.push_back(std::move(spec));
  }
  TRY(StartOrder(services));  // rejects unknown names and cycles
  return services;
}

Result<std::vector<std::string>> StartOrder(const std::vector<ServiceSpec>& services) {
  std::map<std::string, const ServiceSpec*> by_name;
  for (const auto& s : services) by_name[s.name] = &s;
  for (const auto& s : services) {
    for (const auto& dep : s.after) {
      if (!by_name.count(dep)) {
        return Error::Make(
            ErrorCode::kInvalidArgument,
            fmt::format("service {} is ordered after unknown service {}", s.name, dep));
      }
    }
  }
  std::vector<std::string> order;
  std::set<std::string> placed;
  while (order.size() < services.size()) {
    bool progress = false;
    for (const auto& s : services) {
      if (placed.count(s.name)) continue;
      bool ready = std::all_of(s.after.begin(), s.after.end(),
                               [&](const std::string& dep) { return placed.count(dep) != 0; });
      if (!ready) continue;
      order.push_back(s.name);
      placed.insert(s.name);
      progress = true;
    }
    if (!progress) {
      std::string stuck;
      for (const auto& s : services) {
        if (!placed.count(s.name)) stuck += (stuck.empty() ? "" : ", ") + s.name;
      }
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("services ordered in a cycle: {}", stuck));
    }
  }
  return order;
}

std::chrono::milliseconds RestartDelay(int consecutive_failures) {
  if (consecutive_failures <= 0) return std::chrono::milliseconds(0);
  int shift = std::min(consecutive_failures - 1, 5);
  return std::min(std::chrono::milliseconds(1000 << shift), std::chrono::milliseconds(30000));
}

}  // namespace ralph::init
