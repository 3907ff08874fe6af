// Whole-file reads and writes for small files (/proc entries, records under
// /run, config files, build inputs). Shared by every layer that needs them.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph {

// The whole file. kNotFound when absent, kIo on a read error; the message
// names the path.
Result<std::string> ReadWholeFile(const std::string& path);
// Creates or truncates `path`, writes `content` (retrying short writes and
// EINTR) and leaves the file with exactly `mode`, whatever the umask.
Result<void> WriteWholeFile(const std::string& path, std::string_view content, mode_t mode = 0644);

}  // namespace ralph
