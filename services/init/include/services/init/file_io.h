// Whole-file reads and writes for early boot, PID 1 and the health gate
// (small files: /proc/cmdline, records under /run, config in the slot).
#pragma once

#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::init {

// The whole file. kNotFound when absent, kIo on a read error.
Result<std::string> ReadTextFile(const std::string& path);
// Creates or truncates `path` (mode 0644) and writes `content`.
Result<void> WriteTextFile(const std::string& path, std::string_view content);

}  // namespace ralph::init
