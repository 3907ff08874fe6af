// The health gate's clock for tests: time moves only when the code under
// test sleeps.
#pragma once

#include <chrono>
#include <functional>

#include "services/health/checks.h"

namespace ralph::health {

class FakeClock final : public ClockInterface {
 public:
  std::chrono::steady_clock::time_point Now() override { return now; }
  void SleepFor(std::chrono::milliseconds duration) override {
    now += duration;
    ++sleeps;
    if (on_sleep) on_sleep();
  }
  std::chrono::steady_clock::time_point now{};
  int sleeps = 0;
  std::function<void()> on_sleep;
};

}  // namespace ralph::health
