// The health gate's control-plane checks (services/health/checks.h) against
// a fake ControlPlaneInterface and a fake clock: waiting for ralphd to
// answer (and giving up early when ralph-init reports it crash-looping),
// the API's pinned handshake status, the active policy, and the trivial
// sandbox job waited on its state, each failure naming what was wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include <fmt/format.h>

#include "fake_clock.h"
#include "services/health/checks.h"
#include "tests/support/temp_dir.h"

namespace ralph::health {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class FakeControlPlane final : public ControlPlaneInterface {
 public:
  Result<RalphctlOutput> Ralphctl(const std::vector<std::string>& args,
                                  std::chrono::milliseconds bound) override {
    calls.push_back(fmt::format("{}", fmt::join(args, " ")));
    bounds.push_back(bound);
    return ralphctl(args);
  }
  Result<int> ProbeApi(const std::string& address, const std::string& identity_dir) override {
    probes.push_back(address + " " + identity_dir);
    return api();
  }
  std::function<Result<RalphctlOutput>(const std::vector<std::string>&)> ralphctl;
  std::function<Result<int>()> api;
  std::vector<std::string> calls;
  std::vector<std::chrono::milliseconds> bounds;
  std::vector<std::string> probes;
};

RalphctlOutput Ok(std::string json) {
  return {0, std::move(json)};
}
RalphctlOutput NoSocket() {
  return {1, "ralphctl: connecting to /run/ralphd.sock: No such file or directory\n"};
}

class RalphdChecksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.services_status_dir = dir_.path();
    env_.clock = &clock_;
    env_.control_plane = &plane_;
    for (auto& check : HealthChecks()) checks_[check.name] = check.run;
  }
  Result<void> Run(const std::string& name) {
    EXPECT_TRUE(checks_.count(name)) << "no check '" << name << "'";
    if (!checks_.count(name)) return Error::Make(ErrorCode::kNotFound, name);
    return checks_[name](env_);
  }
  void SetRalphdRecord(const std::string& state, int starts, const std::string& last_exit) {
    std::ofstream(dir_ / "ralphd")
        << "state=" << state << "\nstarts=" << starts << "\nlast_exit=" << last_exit << "\n";
  }
  std::chrono::milliseconds Elapsed() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        clock_.now - std::chrono::steady_clock::time_point{});
  }

  ::ralph::testing::TempDir dir_{"ralph-health-ralphd"};
  HealthEnvironment env_;
  FakeClock clock_;
  FakeControlPlane plane_;
  std::map<std::string, std::function<Result<void>(const HealthEnvironment&)>> checks_;
};

TEST_F(RalphdChecksTest, TheControlPlaneChecksFollowTheBaseChecks) {
  std::vector<std::string> names;
  for (const auto& check : HealthChecks()) names.push_back(check.name);
  EXPECT_THAT(names, ElementsAre("services up", "VAR writable", "slot state readable",
                                 "ralphd answers", "ralphd API", "policy loads", "sandbox runs"));
}

TEST_F(RalphdChecksTest, WaitsForRalphdToAnswer) {
  SetRalphdRecord("running", 1, "");
  int calls = 0;
  plane_.ralphctl = [&](const std::vector<std::string>& args) -> Result<RalphctlOutput> {
    EXPECT_THAT(args, ElementsAre("status", "--json"));
    return ++calls < 4 ? NoSocket() : Ok(R"({"running":0,"max_running":2})");
  };
  auto result = Run("ralphd answers");
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(clock_.sleeps, 3);
  EXPECT_EQ(plane_.bounds.front(), env_.ralphctl_bound);
}

TEST_F(RalphdChecksTest, GivesUpOnACrashLoopingRalphdBeforeTheDeadline) {
  SetRalphdRecord("backoff", 3, "exit status 127");
  plane_.ralphctl = [](const std::vector<std::string>&) -> Result<RalphctlOutput> {
    return NoSocket();
  };
  auto result = Run("ralphd answers");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(),
              HasSubstr("ralph-init reports service ralphd backoff after 3 start(s), last exit: "
                        "exit status 127"));
  EXPECT_THAT(result.error().message(), HasSubstr("No such file or directory"));
  EXPECT_EQ(clock_.sleeps, 0);
}

TEST_F(RalphdChecksTest, ASlowRalphdIsWaitedForUntilTheDeadline) {
  // Running (still starting) but never answering: no early give-up.
  SetRalphdRecord("running", 1, "");
  plane_.ralphctl = [](const std::vector<std::string>&) -> Result<RalphctlOutput> {
    return Error::Make(ErrorCode::kTimeout, "ralphctl status --json did not finish");
  };
  auto result = Run("ralphd answers");
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code(), ErrorCode::kTimeout);
  EXPECT_THAT(result.error().message(),
              HasSubstr("ralphd did not answer on its socket within 180 s"));
  EXPECT_GE(Elapsed(), env_.ralphd_ready_deadline);
  EXPECT_LT(Elapsed(), env_.ralphd_ready_deadline + std::chrono::seconds(1));
}

TEST_F(RalphdChecksTest, TheApiMustRefuseAnUnauthenticatedRequest) {
  plane_.api = []() -> Result<int> { return 401; };
  auto result = Run("ralphd API");
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_THAT(plane_.probes, ElementsAre("127.0.0.1:8443 /var/lib/ralph/ralphd/api/identity"));

  plane_.api = []() -> Result<int> { return 200; };
  result = Run("ralphd API");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(), HasSubstr("with HTTP 200 (expected 401)"));

  plane_.api = []() -> Result<int> {
    return Error::Make(ErrorCode::kVerificationFailed,
                       "the server's key does not match the pinned one");
  };
  result = Run("ralphd API");
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code(), ErrorCode::kVerificationFailed);
  EXPECT_THAT(result.error().ToString(), HasSubstr("ralphd's API at 127.0.0.1:8443"));
}

TEST_F(RalphdChecksTest, TheActivePolicyMustHaveTheDefaultProfile) {
  std::string answer = R"({"version":1,"active":true,"profiles":[{"name":"default"}]})";
  plane_.ralphctl = [&](const std::vector<std::string>& args) -> Result<RalphctlOutput> {
    EXPECT_THAT(args, ElementsAre("policy", "get", "--json"));
    return Ok(answer);
  };
  auto result = Run("policy loads");
  ASSERT_TRUE(result) << result.error().ToString();

  answer = R"({"version":4,"active":true,"profiles":[]})";
  result = Run("policy loads");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(),
              HasSubstr("the active policy (version 4) does not parse in ralphd"));

  answer = R"({"version":5,"active":true,"profiles":[{"name":"web"}]})";
  result = Run("policy loads");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(), HasSubstr("has no 'default' profile"));

  answer = "policy: not json";
  result = Run("policy loads");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(), HasSubstr("not a JSON object: policy: not json"));
}

TEST_F(RalphdChecksTest, TheTrivialJobIsWaitedOnItsState) {
  int shows = 0;
  plane_.ralphctl = [&](const std::vector<std::string>& args) -> Result<RalphctlOutput> {
    if (args[0] == "job" && args[1] == "run") return Ok(R"({"id":7,"state":"queued"})");
    EXPECT_THAT(args, ElementsAre("job", "show", "7", "--json"));
    return ++shows < 3 ? Ok(R"({"id":7,"state":"running"})")
                       : Ok(R"({"id":7,"state":"succeeded","termination":"exited","exit_code":0})");
  };
  auto result = Run("sandbox runs");
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(plane_.calls.front(), "job run --detach --json --timeout-ms 60000 -- /bin/true");
  EXPECT_EQ(shows, 3);
  EXPECT_EQ(clock_.sleeps, 2);
}

TEST_F(RalphdChecksTest, AFailedTrivialJobIsReportedWithItsReason) {
  plane_.ralphctl = [&](const std::vector<std::string>& args) -> Result<RalphctlOutput> {
    if (args[1] == "run") return Ok(R"({"id":3,"state":"queued"})");
    return Ok(R"({"id":3,"state":"failed","termination":"exited","exit_code":127,)"
              R"("reason":"exec /bin/true: No such file or directory"})");
  };
  auto result = Run("sandbox runs");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(),
              HasSubstr("the job `/bin/true` under the default policy (job 3) ended failed: "
                        "termination exited, exit code 127, reason: exec /bin/true"));
}

TEST_F(RalphdChecksTest, AJobThatNeverEndsIsCancelledAtTheDeadline) {
  plane_.ralphctl = [&](const std::vector<std::string>& args) -> Result<RalphctlOutput> {
    if (args[1] == "run") return Ok(R"({"id":9,"state":"queued"})");
    return Ok(R"({"id":9,"state":"running"})");
  };
  auto result = Run("sandbox runs");
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code(), ErrorCode::kTimeout);
  EXPECT_THAT(result.error().message(), HasSubstr("(job 9) still running after 120 s (cancelled)"));
  EXPECT_EQ(plane_.calls.back(), "job cancel 9 --json");
  EXPECT_GE(Elapsed(), env_.sandbox_deadline);
}

TEST_F(RalphdChecksTest, ASubmitThatFailsNamesRalphctlsError) {
  plane_.ralphctl = [&](const std::vector<std::string>&) -> Result<RalphctlOutput> {
    return RalphctlOutput{1, "ralphctl job run: profile 'default': not found\n"};
  };
  auto result = Run("sandbox runs");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().ToString(),
              HasSubstr("failed (exit status 1): ralphctl job run: profile 'default': not found"));
}

}  // namespace
}  // namespace ralph::health
