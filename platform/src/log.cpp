#include "platform/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <mutex>
#include <string>

#include "platform/unique_fd.h"

namespace ralph {
namespace {

struct LogState {
  std::mutex mutex;
  std::string tag = "ralph";
  LogSink sink = LogSink::kStderr;
  UniqueFd kmsg;
};

LogState& State() {
  static LogState* state = new LogState();  // never destroyed: usable at exit
  return *state;
}

std::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "info";
}

void WriteAll(int fd, std::string_view text) {
  while (!text.empty()) {
    ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    text.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

void LogInit(std::string_view tag, LogSink sink) {
  LogState& state = State();
  std::lock_guard lock(state.mutex);
  state.tag = std::string(tag);
  state.sink = sink;
  if (sink != LogSink::kStderr && !state.kmsg) {
    state.kmsg.reset(::open("/dev/kmsg", O_WRONLY | O_CLOEXEC | O_NOCTTY));
  }
}

void LogLine(LogLevel level, std::string_view message) {
  LogState& state = State();
  std::lock_guard lock(state.mutex);
  if (state.sink != LogSink::kStderr && state.kmsg) {
    // /dev/kmsg takes one record per write; "<N>" sets the syslog level.
    WriteAll(state.kmsg.get(),
             fmt::format("<{}>{}: {}\n", static_cast<int>(level), state.tag, message));
  }
  if (state.sink != LogSink::kKmsg || !state.kmsg) {
    WriteAll(STDERR_FILENO, fmt::format("{}: {}: {}\n", state.tag, LevelName(level), message));
  }
}

}  // namespace ralph
