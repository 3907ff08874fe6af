// What the agent image's lock file (tools/agent-image/agents.lock) pins, for
// the tests that run its CLIs: the version of an npm package, and whether a
// CLI's output names that version.
//
//   std::string version = LockedNpmVersion(lock_path, "@openai/codex");
//   EXPECT_TRUE(NamesVersion(run.out, version));
#pragma once

#include <string>
#include <string_view>

namespace ralph::testing {

// The version the lock at `lock_path` pins for the npm package on `arch`
// (the lock's arch names: amd64, arm64); "" when it has none.
std::string LockedNpmVersion(const std::string& lock_path, std::string_view package,
                             std::string_view arch = "amd64");

// Whether `text` holds `version` as a word of its own (2.1.3 does not pass
// for 2.1.33).
bool NamesVersion(const std::string& text, const std::string& version);

}  // namespace ralph::testing
