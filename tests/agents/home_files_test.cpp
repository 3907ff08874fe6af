// WriteHomeFiles: each profile's settings files written into a temporary
// directory standing for the job's home, with their directories and modes;
// paths that would leave the home refused.
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "platform/file_io.h"
#include "services/agents/profile.h"
#include "tests/support/temp_dir.h"

namespace ralph::agents {
namespace {

AgentOptions Prompt(std::string prompt) {
  AgentOptions options;
  options.prompt = std::move(prompt);
  return options;
}

TEST(HomeFilesTest, HomeFilesAreWrittenWithTheirDirectoriesAndModes) {
  ralph::testing::TempDir home("agents-home");
  ASSERT_FALSE(home.path().empty());
  for (AgentKind kind : {AgentKind::kClaude, AgentKind::kCodex, AgentKind::kOpenCode}) {
    Result<AgentLaunch> launch = MakeLaunch(kind, Prompt("x"));
    ASSERT_TRUE(launch.has_value());
    Result<void> written = WriteHomeFiles(home.path(), launch->files);
    ASSERT_TRUE(written.has_value()) << written.error().ToString();
    for (const HomeFile& file : launch->files) {
      EXPECT_EQ(ReadWholeFile(home / file.path).value_or(""), file.content);
      struct stat st {};
      ASSERT_EQ(::stat((home / file.path).c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 07777, file.mode) << file.path;
    }
  }
  struct stat st {};
  ASSERT_EQ(::stat((home / ".config/opencode").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  for (const char* bad : {"/etc/passwd", "../escape", ".claude/../../x", "a//b", ""}) {
    std::vector<HomeFile> files = {{bad, "x", 0600}};
    Result<void> refused = WriteHomeFiles(home.path(), files);
    ASSERT_FALSE(refused.has_value()) << bad;
    EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(std::filesystem::exists(home.path() + "/../escape"));
}

}  // namespace
}  // namespace ralph::agents
