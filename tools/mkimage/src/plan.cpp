#include "tools/mkimage/plan.h"

#include <algorithm>
#include <functional>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "platform/hex.h"
#include "platform/sha256.h"

namespace ralph::mkimage {
namespace {

std::string NormalizeModuleName(std::string_view name) {
  std::string out(name);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  return text;
}

}  // namespace

Result<GptSpec> ApplianceGpt(const LayoutSizes& sizes, std::string_view seed) {
  if (sizes.esp_mib < 64) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("ESP size {} MiB is below the 64 MiB FAT32 minimum", sizes.esp_mib));
  }
  for (auto [name, mib] : {std::pair{"SYSTEM", sizes.system_mib}, std::pair{"VAR", sizes.var_mib},
                           std::pair{"RECOVERY", sizes.recovery_mib}}) {
    if (mib < 8) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("{} size {} MiB is below the 8 MiB minimum", name, mib));
    }
  }
  GptSpec spec;
  spec.disk_uuid = DeterministicUuid(seed, "disk");
  auto add = [&](std::string_view label, uint64_t mib, PartitionType type) {
    spec.partitions.push_back(
        {std::string(label), mib * kMiB, type, DeterministicUuid(seed, label)});
  };
  add(kPartEfi, sizes.esp_mib, PartitionType::kEfiSystem);
  add(kPartSystemA, sizes.system_mib, PartitionType::kLinuxFilesystem);
  add(kPartSystemB, sizes.system_mib, PartitionType::kLinuxFilesystem);
  add(kPartVar, sizes.var_mib, PartitionType::kLinuxVar);
  add(kPartRecovery, sizes.recovery_mib, PartitionType::kLinuxFilesystem);
  return spec;
}

uint64_t DiskBytesFor(const GptSpec& spec) {
  uint64_t total = 2 * kGptAlignmentBytes;
  for (const auto& partition : spec.partitions) total += partition.size_bytes;
  return total;
}

std::string DeterministicUuid(std::string_view seed, std::string_view name) {
  std::string input = fmt::format("{}/{}", seed, name);
  // SHA-256 of a short string only fails when OpenSSL cannot allocate.
  auto hashed = Sha256::Of(std::span(reinterpret_cast<const uint8_t*>(input.data()), input.size()));
  Sha256Digest digest = hashed ? *hashed : Sha256Digest{};
  digest[6] = static_cast<uint8_t>((digest[6] & 0x0f) | 0x40);  // version 4
  digest[8] = static_cast<uint8_t>((digest[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string hex = HexEncode(std::span(digest).first(16));
  for (size_t dash : {20, 16, 12, 8}) hex.insert(dash, 1, '-');
  return hex;
}

std::string ModuleNameFromPath(std::string_view path) {
  size_t slash = path.rfind('/');
  std::string_view base = slash == std::string_view::npos ? path : path.substr(slash + 1);
  size_t ko = base.find(".ko");
  if (ko != std::string_view::npos) base = base.substr(0, ko);
  return NormalizeModuleName(base);
}

Result<std::vector<std::string>> ResolveModules(std::string_view modules_dep,
                                                const std::vector<std::string>& wanted) {
  std::map<std::string, std::string> path_by_name;
  std::map<std::string, std::vector<std::string>> deps_by_path;
  size_t pos = 0;
  while (pos < modules_dep.size()) {
    size_t end = modules_dep.find('\n', pos);
    if (end == std::string_view::npos) end = modules_dep.size();
    std::string_view line = Trim(modules_dep.substr(pos, end - pos));
    pos = end + 1;
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string path(Trim(line.substr(0, colon)));
    std::vector<std::string> deps;
    std::istringstream rest{std::string(line.substr(colon + 1))};
    for (std::string dep; rest >> dep;) deps.push_back(dep);
    path_by_name[ModuleNameFromPath(path)] = path;
    deps_by_path[path] = std::move(deps);
  }

  std::vector<std::string> missing;
  std::vector<std::string> order;
  std::set<std::string> done;
  std::set<std::string> visiting;
  std::function<void(const std::string&)> visit = [&](const std::string& path) {
    if (done.count(path) || visiting.count(path)) return;  // a cycle cannot load anyway
    visiting.insert(path);
    auto it = deps_by_path.find(path);
    if (it != deps_by_path.end()) {
      // modules.dep lists the full closure, most dependent first; visiting each
      // recursively still gives dependencies-first order for any listing.
      for (const auto& dep : it->second) visit(dep);
    }
    visiting.erase(path);
    done.insert(path);
    order.push_back(path);
  };
  for (const auto& name : wanted) {
    auto it = path_by_name.find(NormalizeModuleName(name));
    if (it == path_by_name.end()) {
      missing.push_back(name);
      continue;
    }
    visit(it->second);
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    return Error::Make(ErrorCode::kNotFound, fmt::format("modules not in modules.dep: {}", list));
  }
  return order;
}

std::string_view TargetName(BootTarget target) {
  switch (target) {
    case BootTarget::kSlotA: return "a";
    case BootTarget::kSlotB: return "b";
    case BootTarget::kRecovery: return "recovery";
  }
  return "a";
}

std::string_view TargetPartLabel(BootTarget target) {
  switch (target) {
    case BootTarget::kSlotA: return "SYSTEM_A";
    case BootTarget::kSlotB: return "SYSTEM_B";
    case BootTarget::kRecovery: return "RECOVERY";
  }
  return "SYSTEM_A";
}

std::string KernelCmdline(BootTarget target, const CmdlineOptions& options,
                          const std::optional<VerityParams>& verity) {
  // A slot's UKI names no slot: one update bundle installs into either slot,
  // and early boot tells which one booted from the firmware
  // (boot::DetectBooted). RECOVERY's UKI is never a bundle payload and names
  // itself. rootwait is not used: early boot waits for the partition itself
  // and reports a missing one on the console; panic= makes a kernel that
  // never reaches early boot reboot so the firmware falls back.
  std::string cmdline = target == BootTarget::kRecovery
                            ? fmt::format("root=PARTLABEL={} ralph.slot={} ",
                                          TargetPartLabel(target), TargetName(target))
                            : std::string();
  cmdline += fmt::format("ro panic={} console={} ralph.watchdog={} printk.devkmsg=on",
                         options.panic_seconds, options.console, options.watchdog_seconds);
  if (verity) cmdline += " " + RenderVerityCmdline(*verity);
  if (options.quiet) cmdline += " quiet";
  if (!options.extra.empty()) cmdline += " " + options.extra;
  return cmdline;
}

std::vector<std::string> ParseLoaderList(std::string_view output) {
  std::vector<std::string> paths;
  std::istringstream lines{std::string(output)};
  for (std::string line; std::getline(lines, line);) {
    std::string_view view = Trim(line);
    size_t arrow = view.find("=> ");
    std::string_view candidate = arrow == std::string_view::npos ? view : view.substr(arrow + 3);
    if (candidate.empty() || candidate.front() != '/') continue;
    size_t paren = candidate.find(" (");
    if (paren != std::string_view::npos) candidate = candidate.substr(0, paren);
    paths.emplace_back(Trim(candidate));
  }
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  return paths;
}

std::string RenderServicesConf(const std::vector<ServiceEntry>& services) {
  std::string out =
      "# RalphOS services, started by ralph-init in dependency order.\n"
      "# name exec=<path> [args=<a,b>] [after=<n1,n2>] [type=oneshot] [required=no]\n";
  for (const auto& service : services) {
    out += fmt::format("{} exec={}", service.name, service.exec);
    if (!service.args.empty()) out += fmt::format(" args={}", fmt::join(service.args, ","));
    if (!service.after.empty()) out += fmt::format(" after={}", fmt::join(service.after, ","));
    if (service.oneshot) out += " type=oneshot";
    if (!service.required) out += " required=no";
    out += '\n';
  }
  return out;
}

}  // namespace ralph::mkimage

namespace ralph::mkimage {

Result<void> SetPeTimestamp(std::vector<uint8_t>& image, uint32_t epoch) {
  auto u32 = [&](size_t at) {
    return static_cast<uint32_t>(image[at] | (image[at + 1] << 8) | (image[at + 2] << 16) |
                                 (static_cast<uint32_t>(image[at + 3]) << 24));
  };
  auto put32 = [&](size_t at, uint32_t value) {
    for (int i = 0; i < 4; ++i) image[at + i] = static_cast<uint8_t>(value >> (8 * i));
  };
  // MZ header: e_lfanew at 0x3c names the "PE\0\0" signature; the COFF
  // header follows it (TimeDateStamp at +8), then the optional header
  // (CheckSum at +64 for both PE32 and PE32+).
  if (image.size() < 0x40 || image[0] != 'M' || image[1] != 'Z') {
    return Error::Make(ErrorCode::kInvalidArgument, "not a PE image: no MZ header");
  }
  size_t pe = u32(0x3c);
  if (pe + 24 + 68 > image.size() || image[pe] != 'P' || image[pe + 1] != 'E' ||
      image[pe + 2] != 0 || image[pe + 3] != 0) {
    return Error::Make(ErrorCode::kInvalidArgument, "not a PE image: no PE signature");
  }
  size_t stamp = pe + 8;
  size_t checksum = pe + 24 + 64;
  put32(stamp, epoch);
  put32(checksum, 0);
  uint64_t sum = 0;
  for (size_t i = 0; i + 1 < image.size(); i += 2) {
    sum += static_cast<uint32_t>(image[i] | (image[i + 1] << 8));
    sum = (sum & 0xffff) + (sum >> 16);
  }
  if (image.size() % 2) {
    sum += image.back();
    sum = (sum & 0xffff) + (sum >> 16);
  }
  sum = (sum & 0xffff) + (sum >> 16);
  put32(checksum, static_cast<uint32_t>(sum + image.size()));
  return {};
}

}  // namespace ralph::mkimage
