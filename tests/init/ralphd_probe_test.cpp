// The health gate's real control-plane probe (services/health/control_plane.h)
// with a stand-in `ralphctl` first in PATH: its output and exit status come
// back, a ralphctl that never ends is killed at the bound (the gate never
// hangs on a wedged ralphd), and the API probe refuses to run without the
// device identity rather than making one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>

#include "platform/file_io.h"
#include "services/health/control_plane.h"
#include "tests/support/temp_dir.h"

namespace ralph::health {
namespace {

using ::testing::HasSubstr;

class RalphdProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    const char* path = std::getenv("PATH");
    old_path_ = path ? path : "";
    ::setenv("PATH", (dir_.path() + ":" + old_path_).c_str(), 1);
  }
  void TearDown() override { ::setenv("PATH", old_path_.c_str(), 1); }
  // The stand-in ralphctl: a shell script with `body`.
  void FakeRalphctl(const std::string& body) {
    std::string script = dir_ / "ralphctl";
    std::ofstream(script) << "#!/bin/sh\n" << body << "\n";
    ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
  }

  ::ralph::testing::TempDir dir_{"ralph-health-probe"};
  std::string old_path_;
  RalphdProbe probe_{dir_ / "scratch"};
};

TEST_F(RalphdProbeTest, OutputAndExitStatusComeBack) {
  FakeRalphctl(R"(echo "args: $*"; echo '{"running":0}'; exit 3)");
  auto run = probe_.Ralphctl({"status", "--json"}, std::chrono::seconds(60));
  ASSERT_TRUE(run) << run.error().ToString();
  EXPECT_EQ(run->exit_status, 3);
  EXPECT_EQ(run->output, "args: status --json\n{\"running\":0}\n");
}

TEST_F(RalphdProbeTest, ARalphctlThatNeverEndsIsKilledAtTheBound) {
  std::string pid_file = dir_ / "pid";
  FakeRalphctl("echo $$ > " + pid_file + "; exec sleep 100000");
  auto run = probe_.Ralphctl({"status", "--json"}, std::chrono::seconds(2));
  ASSERT_FALSE(run);
  EXPECT_EQ(run.error().code(), ErrorCode::kTimeout);
  EXPECT_THAT(run.error().message(), HasSubstr("ralphctl status --json did not finish within"));
  auto pid = ReadWholeFile(pid_file);
  ASSERT_TRUE(pid) << pid.error().ToString();
  // Killed and reaped: the pid names no process any more.
  EXPECT_NE(::kill(std::atoi(pid->c_str()), 0), 0);
  EXPECT_EQ(errno, ESRCH);
}

TEST_F(RalphdProbeTest, TheApiProbeNeedsTheDeviceIdentity) {
  std::string missing = dir_ / "no-identity";
  auto status = probe_.ProbeApi("127.0.0.1:1", missing);
  ASSERT_FALSE(status);
  EXPECT_THAT(status.error().ToString(), HasSubstr(missing));
  struct stat st {};
  EXPECT_NE(::stat(missing.c_str(), &st), 0) << "the probe made an identity";
}

}  // namespace
}  // namespace ralph::health
