// Directory helpers for the API's state (private); files are written with
// platform/file_io.h's WriteFileAtomically.
#pragma once

#include <sys/types.h>

#include <string>

#include "platform/result.h"

namespace ralph::ralphd::api {

// fsync of a directory, so a rename or create in it is durable.
Result<void> FsyncDirectory(const std::string& path);
// mkdir -p with `mode` for the directories it creates.
Result<void> MakeDirectories(const std::string& path, mode_t mode);

}  // namespace ralph::ralphd::api
