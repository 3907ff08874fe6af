// A gtest environment that moves the test binary's main thread into a fresh
// network namespace (EnterPrivateNetns) before the first test, while no
// other thread exists yet. A test file registers it once:
//
//   const auto* const kEnvironment =
//       ::testing::AddGlobalTestEnvironment(new testing::PrivateNetnsEnvironment);
#pragma once

#include <gtest/gtest.h>

#include "test_topology.h"

namespace ralph::sandbox::testing {

class PrivateNetnsEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { EnterPrivateNetns(); }
};

}  // namespace ralph::sandbox::testing
