// Hardware watchdog behind a small interface, with a fake. init/ralphd
// arm it early and pet it from their main loop; a hang turns into a reboot,
// which the firmware's BootNext/BootOrder turns into a fallback.
//
// Watchdog is the Linux watchdog API (Documentation/watchdog/watchdog-api.rst)
// over /dev/watchdog (softdog where the board has none). FakeWatchdog
// (drivers/testing/fake_watchdog.h) is for tests: NEVER open a real
// /dev/watchdog in a test on a development machine, it reboots it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph {

class WatchdogInterface {
 public:
  virtual ~WatchdogInterface() = default;

  // Arms the watchdog with `timeout`: if Pet() is not called within it, the
  // machine resets. The driver may round the timeout; timeout() tells.
  // kInvalidState when already started.
  virtual Result<void> Start(std::chrono::seconds timeout) = 0;
  // Resets the countdown. kInvalidState when not started.
  virtual Result<void> Pet() = 0;
  // Disarms with the "magic close" ('V' then close), when the driver
  // supports it and was not built with nowayout. kInvalidState when not
  // started.
  virtual Result<void> Stop() = 0;
  // The timeout in effect (0 before Start()).
  virtual std::chrono::seconds timeout() const = 0;
};

class Watchdog final : public WatchdogInterface {
 public:
  static constexpr const char* kDefaultPath = "/dev/watchdog";

  // Does not touch the device: opening it is what arms it, so that happens
  // in Start().
  explicit Watchdog(std::string path = kDefaultPath) : path_(std::move(path)) {}
  // Destroying a started Watchdog without Stop() closes it without the magic
  // character: the watchdog stays armed and resets the machine unless
  // someone opens and pets it again. That is the point: a supervisor that
  // dies must not leave the machine unguarded.
  ~Watchdog() override = default;

  // Opens the device (arming it), checks it is a watchdog (WDIOC_GETSUPPORT;
  // kUnsupported otherwise), sets the timeout (WDIOC_SETTIMEOUT; kUnsupported
  // when the driver cannot) and pets it once. On failure after the device
  // was opened the watchdog is disarmed again with the magic close.
  Result<void> Start(std::chrono::seconds timeout) override;
  // WDIOC_KEEPALIVE.
  Result<void> Pet() override;
  // Writes 'V' and closes. kUnsupported (the watchdog stays armed) when the
  // driver does not advertise WDIOF_MAGICCLOSE.
  Result<void> Stop() override;
  std::chrono::seconds timeout() const override { return timeout_; }

  const std::string& path() const { return path_; }
  // The driver's identity string from WDIOC_GETSUPPORT ("Software Watchdog").
  const std::string& identity() const { return identity_; }

 private:
  std::string path_;
  UniqueFd fd_;
  std::chrono::seconds timeout_{0};
  std::string identity_;
  uint32_t options_ = 0;
};

}  // namespace ralph
