#include "drivers/watchdog.h"

#include <fcntl.h>
#include <linux/watchdog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace ralph {
namespace {

// Writes the magic 'V' so the driver disarms on close
// (Documentation/watchdog/watchdog-api.rst, "Magic Close feature").
void MagicClose(UniqueFd& fd) {
  const char magic = 'V';
  ssize_t n;
  do {
    n = ::write(fd.get(), &magic, 1);
  } while (n < 0 && errno == EINTR);
  fd.reset();
}

}  // namespace

Result<void> Watchdog::Start(std::chrono::seconds timeout) {
  if (fd_) return Error::Make(ErrorCode::kInvalidState, fmt::format("{} already started", path_));
  if (timeout.count() <= 0 || timeout.count() > INT32_MAX) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("watchdog timeout of {} s is out of range", timeout.count()));
  }
  int fd;
  do {
    fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Error::FromErrno(fmt::format("opening watchdog {}", path_), errno);
  UniqueFd device(fd);

  struct watchdog_info info {};
  if (::ioctl(device.get(), WDIOC_GETSUPPORT, &info) < 0) {
    int err = errno;
    // Not a watchdog: do not leave anything half-armed. Writing 'V' to a
    // random file would modify it, so only close.
    device.reset();
    return Error::FromErrno(ErrorCode::kUnsupported,
                            fmt::format("{} is not a watchdog device: WDIOC_GETSUPPORT", path_),
                            err);
  }
  options_ = info.options;
  identity_.assign(reinterpret_cast<const char*>(info.identity),
                   strnlen(reinterpret_cast<const char*>(info.identity), sizeof(info.identity)));

  if (!(info.options & WDIOF_SETTIMEOUT)) {
    MagicClose(device);
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("watchdog {} ({}) cannot change its timeout", path_, identity_));
  }
  int seconds = static_cast<int>(timeout.count());
  // The driver may round; it writes back the timeout it uses.
  if (::ioctl(device.get(), WDIOC_SETTIMEOUT, &seconds) < 0) {
    int err = errno;
    MagicClose(device);
    return Error::FromErrno(
        fmt::format("setting watchdog {} timeout to {} s", path_, timeout.count()), err);
  }
  if (::ioctl(device.get(), WDIOC_KEEPALIVE, 0) < 0) {
    int err = errno;
    MagicClose(device);
    return Error::FromErrno(fmt::format("petting watchdog {}", path_), err);
  }
  timeout_ = std::chrono::seconds(seconds);
  fd_ = std::move(device);
  return {};
}

Result<void> Watchdog::Pet() {
  if (!fd_) return Error::Make(ErrorCode::kInvalidState, fmt::format("{} not started", path_));
  if (::ioctl(fd_.get(), WDIOC_KEEPALIVE, 0) < 0) {
    return Error::FromErrno(fmt::format("petting watchdog {}", path_), errno);
  }
  return {};
}

Result<void> Watchdog::Stop() {
  if (!fd_) return Error::Make(ErrorCode::kInvalidState, fmt::format("{} not started", path_));
  if (!(options_ & WDIOF_MAGICCLOSE)) {
    // Closing would not disarm it; keep the descriptor so the caller can
    // keep petting.
    return Error::Make(
        ErrorCode::kUnsupported,
        fmt::format("watchdog {} ({}) has no magic close; it stays armed", path_, identity_));
  }
  MagicClose(fd_);
  timeout_ = std::chrono::seconds(0);
  return {};
}

}  // namespace ralph
