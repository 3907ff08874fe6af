// Running the host tools the image builder relies on (apt-get, dpkg-deb,
// depmod, objcopy, mksquashfs, mkfs.vfat, mtools, ...).
#pragma once

#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::mkimage {

struct ToolCommand {
  std::vector<std::string> argv;       // argv[0] is looked up in PATH
  std::vector<std::string> extra_env;  // "NAME=value", added to the environment
  std::string cwd;                     // empty: the current directory
};

// Runs the command to completion and returns its standard output. Fails with
// kNotFound when the tool is not installed (naming the Debian package to
// install when known), kIo with the exit status and the last lines of its
// standard error otherwise.
Result<std::string> RunTool(const ToolCommand& command);

// "mksquashfs -> squashfs-tools": the package that ships a tool, for errors.
std::string PackageForTool(const std::string& tool);

}  // namespace ralph::mkimage
