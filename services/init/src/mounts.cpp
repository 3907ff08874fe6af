#include "services/init/mounts.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <sstream>

#include <fmt/format.h>

#include "platform/file_io.h"

namespace ralph::init {
namespace {

constexpr unsigned long kHardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;

std::string Unescape(const std::string& field) {
  // mountinfo escapes space, tab, newline and backslash as \ooo.
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      int value = (field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 + (field[i + 3] - '0');
      out += static_cast<char>(value);
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

Result<void> MakeDirectories(const std::string& path, mode_t mode) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    std::string prefix = slash == std::string::npos ? path : path.substr(0, slash);
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return Error::FromErrno(fmt::format("mkdir {}", prefix), errno);
    }
    if (slash == std::string::npos) return {};
  }
}

}  // namespace

std::vector<MountSpec> EarlyMounts() {
  return {
      {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755", 0755, false},
      {"proc", "/proc", "proc", kHardened, "", 0555, false},
      {"sysfs", "/sys", "sysfs", kHardened, "", 0555, false},
      {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=20%", 0755, false},
  };
}

std::vector<MountSpec> Pid1Mounts() {
  std::vector<MountSpec> specs = EarlyMounts();
  specs.push_back({"tmpfs", "/dev/shm", "tmpfs", kHardened, "mode=1777", 01777, false});
  specs.push_back(
      {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=20%", 01777, false});
  specs.push_back({"efivarfs", "/sys/firmware/efi/efivars", "efivarfs", kHardened, "", 0755, true});
  specs.push_back({"cgroup2", "/sys/fs/cgroup", "cgroup2", kHardened, "nsdelegate", 0755, false});
  return specs;
}

std::vector<std::string> ParseMountPoints(std::string_view mountinfo) {
  std::vector<std::string> points;
  std::istringstream lines{std::string(mountinfo)};
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::string field;
    for (int i = 0; i < 5 && (fields >> field); ++i) {
      if (i == 4) points.push_back(Unescape(field));
    }
  }
  return points;
}

Result<void> ApplyMounts(const std::vector<MountSpec>& specs,
                         std::vector<Error>* optional_failures) {
  for (const auto& spec : specs) {
    // Before /proc is mounted there is no mountinfo: nothing is mounted yet.
    auto mountinfo = ReadWholeFile("/proc/self/mountinfo");
    std::vector<std::string> mounted =
        mountinfo ? ParseMountPoints(*mountinfo) : std::vector<std::string>();
    if (std::find(mounted.begin(), mounted.end(), spec.target) != mounted.end()) continue;
    auto result = [&]() -> Result<void> {
      TRY(MakeDirectories(spec.target, spec.mode));
      if (::mount(spec.source.c_str(), spec.target.c_str(), spec.fstype.c_str(), spec.flags,
                  spec.data.empty() ? nullptr : spec.data.c_str()) != 0) {
        return Error::FromErrno(fmt::format("mount {} on {}", spec.fstype, spec.target), errno);
      }
      return {};
    }();
    if (!result) {
      if (!spec.optional) return result;
      if (optional_failures) optional_failures->push_back(result.error());
    }
  }
  return {};
}

VarContent ClassifyVarHead(std::span<const uint8_t> head) {
  // ext2/3/4 superblock at byte 1024; s_magic 0xEF53 (little-endian) at +56.
  constexpr size_t kMagicOffset = 1024 + 56;
  if (head.size() > kMagicOffset + 1 && head[kMagicOffset] == 0x53 &&
      head[kMagicOffset + 1] == 0xEF) {
    return VarContent::kExt4;
  }
  bool blank = std::all_of(head.begin(), head.end(), [](uint8_t b) { return b == 0; });
  return blank ? VarContent::kBlank : VarContent::kUnknown;
}

FsckOutcome InterpretFsckStatus(int exit_status) {
  if (exit_status == 0) return FsckOutcome::kClean;
  if (exit_status < 4) return FsckOutcome::kRepaired;
  return FsckOutcome::kFailed;
}

}  // namespace ralph::init
