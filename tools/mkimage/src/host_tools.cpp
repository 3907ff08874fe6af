#include "tools/mkimage/host_tools.h"

#include <map>

#include "platform/process.h"

namespace ralph::mkimage {

std::string PackageForTool(const std::string& tool) {
  static const std::map<std::string, std::string> kPackages = {
      {"apt-get", "apt"},          {"apt-cache", "apt"},       {"dpkg-deb", "dpkg"},
      {"depmod", "kmod"},          {"objcopy", "binutils"},    {"mksquashfs", "squashfs-tools"},
      {"mkfs.vfat", "dosfstools"}, {"mmd", "mtools"},          {"mcopy", "mtools"},
      {"mke2fs", "e2fsprogs"},     {"e2fsck", "e2fsprogs"},    {"zstd", "zstd"},
      {"sbsign", "sbsigntool"},    {"sbverify", "sbsigntool"},
  };
  auto it = kPackages.find(tool);
  return it == kPackages.end() ? std::string() : it->second;
}

Result<std::string> RunTool(const std::vector<std::string>& argv, const std::string& cwd) {
  return RunProgramChecked({.argv = argv,
                            .cwd = cwd,
                            .package = argv.empty() ? std::string() : PackageForTool(argv[0])});
}

}  // namespace ralph::mkimage
