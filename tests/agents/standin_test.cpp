// The stand-in agent (standin/standin_main.cpp) run again and again in one
// workspace, as loop mode will run it: each run is one iteration with its
// own file changes and stream-json transcript, read with the Claude Code
// parser; run K prints the completion promise; a stalled stand-in changes
// nothing; bad command lines are refused like claude's.
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "event_test_util.h"
#include "platform/file_io.h"
#include "services/agents/parser.h"
#include "services/agents/profile.h"
#include "tests/support/run_program.h"
#include "tests/support/temp_dir.h"

namespace ralph::agents {
namespace {

using nlohmann::json;
using testing::ProgramStreams;
using testing::RunProgramStreams;
using testing::TempDir;

std::string Standin() {
  const char* dir = std::getenv("RALPH_BINARY_DIR");
  return std::string(dir ? dir : ".") + "/tests/ralph-agent-standin";
}

// The claude profile's argv with the stand-in in place of claude, run in
// `workspace`.
ProgramStreams RunIteration(const std::string& workspace, const std::string& prompt,
                            const std::vector<std::string>& env) {
  AgentOptions options;
  options.prompt = prompt;
  options.max_turns = 10;
  Result<AgentLaunch> launch = MakeLaunch(AgentKind::kClaude, options);
  EXPECT_TRUE(launch.has_value());
  std::vector<std::string> argv = {"env", "-C", workspace, Standin()};
  argv.insert(argv.end(), launch->argv.begin() + 1, launch->argv.end());
  return RunProgramStreams(argv, env);
}

bool HasPromise(const std::vector<json>& events, const std::string& promise) {
  for (const json& event : events) {
    if ((event["type"] == "message" || event["type"] == "result") &&
        event["text"].get<std::string>().find(promise) != std::string::npos) {
      return true;
    }
  }
  return false;
}

TEST(StandinTest, EditsOneStepPerRunAndPrintsThePromiseAtK) {
  TempDir workspace("agents-standin");
  ASSERT_FALSE(workspace.path().empty());
  const std::vector<std::string> env = {"RALPH_STANDIN_ITERATIONS=3",
                                        "RALPH_STANDIN_PROMISE=<promise>SHIPPED</promise>",
                                        "RALPH_STANDIN_STOP_FILE=STOP"};
  for (int i = 1; i <= 4; ++i) {
    SCOPED_TRACE("iteration " + std::to_string(i));
    ProgramStreams run = RunIteration(workspace.path(), "Fix the parser\nmore detail", env);
    ASSERT_EQ(run.exit, 0) << run.err;
    std::vector<json> events = Parse(AgentKind::kClaude, run.out);
    EXPECT_TRUE(OfType(events, "parse_error").empty()) << run.out;
    ASSERT_EQ(events.front()["type"], "session");
    EXPECT_EQ(events.front()["session_id"], "standin-session-" + std::to_string(i));
    EXPECT_EQ(events.front()["cwd"], workspace.path());
    json result = events.back();
    ASSERT_EQ(result["type"], "result");
    EXPECT_EQ(result["status"], "success");
    json usage = OfType(events, "usage").back();
    EXPECT_EQ(usage["input_tokens"], 1000);
    EXPECT_EQ(usage["output_tokens"], 200);
    EXPECT_EQ(usage["cache_read_tokens"], 3000);
    EXPECT_EQ(usage["cache_write_tokens"], 500);
    EXPECT_DOUBLE_EQ(usage["cost_usd"].get<double>(), 0.01);
    EXPECT_EQ(HasPromise(events, "<promise>SHIPPED</promise>"), i >= 3);
    EXPECT_EQ(std::filesystem::exists(workspace / "STOP"), i >= 3);
    if (i <= 3) {
      std::vector<json> calls = OfType(events, "tool_call");
      ASSERT_EQ(calls.size(), 1u);
      std::string step = "notes/step-" + std::to_string(i) + ".txt";
      EXPECT_EQ(calls[0]["name"], "Write");
      EXPECT_EQ(calls[0]["input"]["file_path"], step);
      EXPECT_EQ(OfType(events, "tool_result")[0]["status"], "ok");
      Result<std::string> content = ReadWholeFile(workspace / step);
      ASSERT_TRUE(content.has_value());
      EXPECT_EQ(*content, "iteration " + std::to_string(i) + "\nprompt: Fix the parser\n");
    } else {
      EXPECT_TRUE(OfType(events, "tool_call").empty());  // done: nothing more to change
      EXPECT_FALSE(std::filesystem::exists(workspace / "notes/step-4.txt"));
    }
  }
  Result<std::string> progress = ReadWholeFile(workspace / "PROGRESS.md");
  ASSERT_TRUE(progress.has_value());
  EXPECT_EQ(*progress, "- iteration 1\n- iteration 2\n- iteration 3\n");
}

TEST(StandinTest, StallingStandinChangesNothing) {
  TempDir workspace("agents-standin");
  ASSERT_FALSE(workspace.path().empty());
  const std::vector<std::string> env = {"RALPH_STANDIN_ITERATIONS=5",
                                        "RALPH_STANDIN_STALL_AFTER=1"};
  ASSERT_EQ(RunIteration(workspace.path(), "p", env).exit, 0);
  Result<std::string> state = ReadWholeFile(workspace / ".standin/state.json");
  ASSERT_TRUE(state.has_value());
  for (int i = 0; i < 2; ++i) {
    ProgramStreams run = RunIteration(workspace.path(), "p", env);
    ASSERT_EQ(run.exit, 0) << run.err;
    std::vector<json> events = Parse(AgentKind::kClaude, run.out);
    EXPECT_TRUE(OfType(events, "tool_call").empty());
    EXPECT_FALSE(HasPromise(events, "<promise>DONE</promise>"));
    EXPECT_EQ(ReadWholeFile(workspace / ".standin/state.json").value_or(""), *state);
  }
  EXPECT_FALSE(std::filesystem::exists(workspace / "notes/step-2.txt"));
}

TEST(StandinTest, RefusesCommandLinesClaudeWouldRefuse) {
  TempDir workspace("agents-standin");
  ProgramStreams no_verbose = RunProgramStreams(
      {"env", "-C", workspace.path(), Standin(), "-p", "--output-format", "stream-json", "x"});
  EXPECT_EQ(no_verbose.exit, 1);
  EXPECT_NE(no_verbose.err.find("requires --verbose"), std::string::npos) << no_verbose.err;
  ProgramStreams unknown =
      RunProgramStreams({"env", "-C", workspace.path(), Standin(), "-p", "--output-format",
                         "stream-json", "--verbose", "--bare", "x"});
  EXPECT_EQ(unknown.exit, 1);
  EXPECT_NE(unknown.err.find("unknown option '--bare'"), std::string::npos) << unknown.err;
  EXPECT_FALSE(std::filesystem::exists(workspace / ".standin"));
}

}  // namespace
}  // namespace ralph::agents
