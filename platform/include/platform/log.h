// Logging for binaries (libraries return errors and do not log).
//
// A process-wide sink: stderr by default; PID 1 and early boot switch it to
// /dev/kmsg so lines reach the console and the kernel ring buffer. Each line
// is "<tag>: <level>: <message>".
#pragma once

#include <string_view>

#include <fmt/format.h>

namespace ralph {

enum class LogLevel { kError = 3, kWarning = 4, kInfo = 6, kDebug = 7 };

enum class LogSink { kStderr, kKmsg, kStderrAndKmsg };

// Sets the tag ("ralph-init") and the sink. Safe to call again.
void LogInit(std::string_view tag, LogSink sink);
void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void LogInfo(fmt::format_string<Args...> format, Args&&... args) {
  LogLine(LogLevel::kInfo, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void LogWarning(fmt::format_string<Args...> format, Args&&... args) {
  LogLine(LogLevel::kWarning, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void LogError(fmt::format_string<Args...> format, Args&&... args) {
  LogLine(LogLevel::kError, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace ralph
