// WatchdogInterface for tests: records what was done to it and can fail
// each operation. Never touches /dev/watchdog.
#pragma once

#include <optional>

#include "drivers/watchdog.h"

namespace ralph::testing {

class FakeWatchdog final : public WatchdogInterface {
 public:
  enum class Op { kStart, kPet, kStop };

  Result<void> Start(std::chrono::seconds timeout) override;
  Result<void> Pet() override;
  Result<void> Stop() override;
  std::chrono::seconds timeout() const override { return timeout_; }

  // The next call of `op` fails with `err` (errno).
  void FailNext(Op op, int err) { fail_ = Failure{op, err}; }
  // Makes the fake round timeouts down to a multiple of `granularity`, like
  // drivers with coarse hardware counters.
  void SetGranularity(std::chrono::seconds granularity) { granularity_ = granularity; }

  bool armed() const { return armed_; }
  int starts() const { return starts_; }
  int pets() const { return pets_; }
  int magic_closes() const { return magic_closes_; }

 private:
  struct Failure {
    Op op;
    int err;
  };
  Result<void> MaybeFail(Op op, const char* what);

  std::optional<Failure> fail_;
  std::chrono::seconds granularity_{1};
  std::chrono::seconds timeout_{0};
  bool armed_ = false;
  int starts_ = 0;
  int pets_ = 0;
  int magic_closes_ = 0;
};

}  // namespace ralph::testing
