// Waiting on state in tests and benchmarks: `done` is polled (every 10 ms)
// until it holds or `limit` has passed, a bound generous enough for the
// slowest machine; the caller fails on false. Never a sleep in place of a
// condition.
//
//   ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() >= 3; }));
#pragma once

#include <chrono>
#include <thread>

namespace ralph::testing {

template <typename F>
bool WaitFor(F done, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

}  // namespace ralph::testing
