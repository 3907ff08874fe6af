#include "boot/boot_config.h"

#include <charconv>
#include <sstream>

#include <fmt/format.h>

namespace ralph::boot {

Result<BootConfig> ParseKernelCmdline(std::string_view cmdline) {
  BootConfig config;
  std::istringstream words{std::string(cmdline)};
  for (std::string word; words >> word;) {
    auto value_of = [&](std::string_view key) -> std::optional<std::string> {
      if (word.size() > key.size() && word.compare(0, key.size(), key) == 0) {
        return word.substr(key.size());
      }
      return std::nullopt;
    };
    if (auto root = value_of("root=")) {
      if (root->rfind("PARTLABEL=", 0) != 0) {
        return Error::Make(
            ErrorCode::kInvalidArgument,
            fmt::format("kernel command line: root={} is not root=PARTLABEL=<label>", *root));
      }
      config.root_partlabel = root->substr(10);
      if (config.root_partlabel->empty()) {
        return Error::Make(ErrorCode::kInvalidArgument,
                           "kernel command line: root=PARTLABEL= names no partition");
      }
    } else if (auto slot = value_of("ralph.slot=")) {
      config.slot = *slot;
    } else if (auto seconds = value_of("ralph.watchdog=")) {
      int value = 0;
      auto [ptr, ec] = std::from_chars(seconds->data(), seconds->data() + seconds->size(), value);
      if (ec != std::errc() || ptr != seconds->data() + seconds->size() || value < 0) {
        return Error::Make(ErrorCode::kInvalidArgument,
                           fmt::format("kernel command line: ralph.watchdog={} is not a number "
                                       "of seconds",
                                       *seconds));
      }
      config.watchdog_seconds = value;
    } else if (auto path = value_of("ralph.init=")) {
      config.init = *path;
    }
  }
  if (config.slot && *config.slot != "a" && *config.slot != "b" && *config.slot != "recovery") {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("kernel command line: ralph.slot='{}' is not a, b or recovery", *config.slot));
  }
  return config;
}

Result<std::string> RootPartLabel(const BootConfig& config, std::string_view slot) {
  std::string label;
  if (slot == "a") {
    label = "SYSTEM_A";
  } else if (slot == "b") {
    label = "SYSTEM_B";
  } else if (slot == "recovery") {
    label = "RECOVERY";
  } else {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("slot '{}' is not a, b or recovery", slot));
  }
  if (config.root_partlabel && *config.root_partlabel != label) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("kernel command line root=PARTLABEL={} is not slot {}'s root "
                                   "{}: refusing to mount another slot's root",
                                   *config.root_partlabel, SlotDisplayName(slot), label));
  }
  return label;
}

std::string_view BootModeName(BootMode mode) {
  return mode == BootMode::kRecovery ? "recovery" : "slot";
}

std::string SlotDisplayName(std::string_view slot) {
  std::string out(slot);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string RenderRecord(const std::map<std::string, std::string>& values) {
  std::string out;
  for (const auto& [key, value] : values) out += fmt::format("{}={}\n", key, value);
  return out;
}

std::map<std::string, std::string> ParseRecord(std::string_view text) {
  std::map<std::string, std::string> values;
  std::istringstream lines{std::string(text)};
  for (std::string line; std::getline(lines, line);) {
    size_t eq = line.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return values;
}

}  // namespace ralph::boot
