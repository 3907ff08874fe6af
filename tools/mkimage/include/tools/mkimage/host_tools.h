// Running the host tools the image builder relies on (apt-get, dpkg-deb,
// depmod, objcopy, mksquashfs, mkfs.vfat, mtools, ...) through
// platform/process.h, naming the Debian package of a missing tool.
#pragma once

#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::mkimage {

// Runs `argv` (argv[0] looked up in PATH) in `cwd` (empty: the current
// directory) to success and returns its standard output (RunProgramChecked).
// kNotFound naming the Debian package when the tool is not installed, kIo
// with the exit status and the end of its standard error when it fails.
Result<std::string> RunTool(const std::vector<std::string>& argv, const std::string& cwd = {});

// "mksquashfs -> squashfs-tools": the package that ships a tool, for errors.
std::string PackageForTool(const std::string& tool);

}  // namespace ralph::mkimage
