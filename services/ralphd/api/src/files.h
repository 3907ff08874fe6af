// Durable small-file writes for the API's state (private).
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::ralphd::api {

// Creates `path` exclusively with `mode`, writes `content` and fsyncs it.
Result<void> WriteNewFileDurably(const std::string& path, std::string_view content, mode_t mode);
// fsync of a directory, so a rename or create in it is durable.
Result<void> FsyncDirectory(const std::string& path);
// mkdir -p with `mode` for the directories it creates.
Result<void> MakeDirectories(const std::string& path, mode_t mode);

}  // namespace ralph::ralphd::api
