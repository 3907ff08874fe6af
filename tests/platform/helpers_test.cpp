// The tree's one copy of each generic helper: hex (platform/hex.h), the
// atomic file writer (platform/file_io.h), the program runner
// (platform/process.h) and the command-line parser (platform/cli.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "platform/cli.h"
#include "platform/file_io.h"
#include "platform/hex.h"
#include "platform/process.h"
#include "tests/support/temp_dir.h"

namespace ralph {
namespace {

using ::testing::HasSubstr;

// ---- hex ----

TEST(HexTest, EncodesLowerCaseAndDecodesEitherCase) {
  std::vector<uint8_t> bytes = {0x00, 0x0f, 0xab, 0xff};
  EXPECT_EQ(HexEncode(bytes), "000fabff");
  EXPECT_EQ(*HexDecode("000fabff"), bytes);
  EXPECT_EQ(*HexDecode("000FABFF"), bytes);
  EXPECT_EQ(*HexDecode("000fAbFf"), bytes);
  EXPECT_TRUE(HexDecode("")->empty());
}

TEST(HexTest, RejectsOddLengthAndNonHexNamingTheProblem) {
  auto odd = HexDecode("abc");
  ASSERT_FALSE(odd);
  EXPECT_EQ(odd.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(odd.error().message(), "odd number of hex digits (3)");

  auto bad = HexDecode("00g1");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().message(), "'g' at position 2 is not a hex digit");

  uint8_t four[4];
  auto short_input = HexDecodeInto("0011", four);
  ASSERT_FALSE(short_input);
  EXPECT_EQ(short_input.error().message(), "expected 8 hex digits, got 4");
  auto spaced = HexDecodeInto("00 11223", four);
  ASSERT_FALSE(spaced);
  EXPECT_EQ(spaced.error().message(), "' ' at position 2 is not a hex digit");
}

TEST(HexTest, DigitValues) {
  EXPECT_EQ(HexDigitValue('0'), 0);
  EXPECT_EQ(HexDigitValue('9'), 9);
  EXPECT_EQ(HexDigitValue('a'), 10);
  EXPECT_EQ(HexDigitValue('F'), 15);
  EXPECT_EQ(HexDigitValue('g'), -1);
  EXPECT_EQ(HexDigitValue('/'), -1);
}

// ---- atomic file ----

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    path_ = dir_ / "state";
  }

  // Every name in the directory: the target only, no temporary left behind.
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

  testing::TempDir dir_{"ralph-atomic"};
  std::string path_;
};

TEST_F(AtomicFileTest, ReplacesContentAndModeAtEveryDurability) {
  ASSERT_TRUE(WriteWholeFile(path_, "old", 0600));
  for (Durability durability :
       {Durability::kNone, Durability::kFileSynced, Durability::kFileAndDirectorySynced}) {
    std::string content = "new " + std::to_string(static_cast<int>(durability));
    ASSERT_TRUE(WriteFileAtomically(path_, content, 0640, durability));
    EXPECT_EQ(*ReadWholeFile(path_), content);
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
    EXPECT_EQ(Entries(), std::vector<std::string>{"state"});
  }
}

TEST_F(AtomicFileTest, FailedWriteLeavesTheOldContent) {
  ASSERT_TRUE(WriteWholeFile(path_, "old content", 0644));
  // A file size limit makes the write fail at a known byte offset (EFBIG;
  // SIGXFSZ ignored so it is an error, not a kill).
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = 64;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  auto written =
      WriteFileAtomically(path_, std::string(4096, 'x'), 0644, Durability::kFileAndDirectorySynced);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  std::signal(SIGXFSZ, old_handler);

  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().sys_errno(), EFBIG);
  EXPECT_THAT(written.error().message(), HasSubstr("write " + path_));
  EXPECT_EQ(*ReadWholeFile(path_), "old content");
  EXPECT_EQ(Entries(), std::vector<std::string>{"state"});
}

TEST_F(AtomicFileTest, FailedRenameLeavesTheOldContentAndNoTemporary) {
  // A directory in the way: rename(2) refuses (EISDIR).
  ASSERT_EQ(::mkdir(path_.c_str(), 0755), 0);
  auto written = WriteFileAtomically(path_, "new", 0644, Durability::kFileSynced);
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().sys_errno(), EISDIR);
  EXPECT_THAT(written.error().message(), HasSubstr("rename"));
  EXPECT_EQ(Entries(), std::vector<std::string>{"state"});
}

TEST_F(AtomicFileTest, AbandonedWriterRemovesItsTemporary) {
  ASSERT_TRUE(WriteWholeFile(path_, "old", 0644));
  {
    auto file = AtomicFile::Create(path_, 0644);
    ASSERT_TRUE(file) << file.error().ToString();
    ASSERT_TRUE(WriteAll(file->fd(), "half", file->temp_path()));
    EXPECT_EQ(Entries().size(), 2u);
  }
  EXPECT_EQ(*ReadWholeFile(path_), "old");
  EXPECT_EQ(Entries(), std::vector<std::string>{"state"});
}

TEST_F(AtomicFileTest, ConcurrentWritersUseDistinctTemporaries) {
  auto first = AtomicFile::Create(path_, 0644);
  auto second = AtomicFile::Create(path_, 0644);
  ASSERT_TRUE(first && second);
  EXPECT_NE(first->temp_path(), second->temp_path());
  ASSERT_TRUE(WriteAll(first->fd(), "first", first->temp_path()));
  ASSERT_TRUE(WriteAll(second->fd(), "second", second->temp_path()));
  ASSERT_TRUE(second->Commit(Durability::kNone));
  ASSERT_TRUE(first->Commit(Durability::kNone));
  EXPECT_EQ(*ReadWholeFile(path_), "first");
  auto again = first->Commit(Durability::kNone);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), ErrorCode::kInvalidState);
}

// ---- programs ----

TEST(ProcessTest, ReportsExitStatusAndCapturesBothStreams) {
  auto run = RunProgram({.argv = {"sh", "-c", "echo out; echo err >&2; exit 3"}});
  ASSERT_TRUE(run) << run.error().ToString();
  EXPECT_FALSE(run->ok());
  EXPECT_EQ(run->exit_status, 3);
  EXPECT_EQ(run->signal, 0);
  EXPECT_EQ(run->out, "out\n");
  EXPECT_EQ(run->err, "err\n");
  EXPECT_EQ(run->Describe(), "exit status 3");
}

TEST(ProcessTest, ReportsTheSignalThatKilledIt) {
  auto run = RunProgram({.argv = {"sh", "-c", "kill -KILL $$"}});
  ASSERT_TRUE(run) << run.error().ToString();
  EXPECT_FALSE(run->ok());
  EXPECT_EQ(run->signal, SIGKILL);
  EXPECT_EQ(run->Describe(), "killed by signal 9");
}

TEST(ProcessTest, ChildStartsWithNothingBlockedOrIgnored) {
  // Blocked and ignored here; the child must still die of SIGTERM.
  sigset_t term, saved;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &term, &saved), 0);
  auto old_handler = std::signal(SIGTERM, SIG_IGN);
  auto run = RunProgram({.argv = {"sh", "-c", "kill -TERM $$; exit 0"}});
  std::signal(SIGTERM, old_handler);
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, &saved, nullptr), 0);
  ASSERT_TRUE(run) << run.error().ToString();
  EXPECT_EQ(run->signal, SIGTERM);
}

TEST(ProcessTest, EnvironmentWorkingDirectoryAndStdin) {
  auto run = RunProgram(
      {.argv = {"sh", "-c", "echo \"$RALPH_X\"; pwd; cat"}, .env = {"RALPH_X=1"}, .cwd = "/"});
  ASSERT_TRUE(run) << run.error().ToString();
  EXPECT_TRUE(run->ok());
  EXPECT_EQ(run->out, "1\n/\n");  // stdin is /dev/null: cat prints nothing

  auto only = RunProgram(
      {.argv = {"/usr/bin/env"}, .env = {"ONLY=this"}, .environment = ProgramEnvironment::kOnly});
  ASSERT_TRUE(only) << only.error().ToString();
  EXPECT_EQ(only->out, "ONLY=this\n");
}

TEST(ProcessTest, StreamsStdoutToTheCallback) {
  std::string seen;
  auto run = RunProgram({.argv = {"sh", "-c", "head -c 200000 /dev/zero | tr '\\0' a"},
                         .on_stdout = [&](std::span<const uint8_t> data) -> Result<void> {
                           seen.append(reinterpret_cast<const char*>(data.data()), data.size());
                           return {};
                         }});
  ASSERT_TRUE(run) << run.error().ToString();
  EXPECT_TRUE(run->out.empty());
  EXPECT_EQ(seen, std::string(200000, 'a'));

  // A failing sink is the result, and the program still runs to its end.
  auto refused = RunProgram({.argv = {"sh", "-c", "head -c 200000 /dev/zero"},
                             .on_stdout = [](std::span<const uint8_t>) -> Result<void> {
                               return Error::Make(ErrorCode::kNoSpace, "sink full");
                             }});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message(), "sink full");
}

TEST(ProcessTest, MissingProgramNamesItsPackage) {
  auto run = RunProgram({.argv = {"ralph-no-such-tool"}, .package = "ralph-tools"});
  ASSERT_FALSE(run);
  EXPECT_EQ(run.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(run.error().message(), "ralph-no-such-tool: not found (Debian package ralph-tools)");
  auto empty = RunProgram({});
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code(), ErrorCode::kInvalidArgument);
}

TEST(ProcessTest, CheckedRunReturnsStdoutOrTheFailureWithStderr) {
  auto ok = RunProgramChecked({.argv = {"echo", "hello"}});
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ(*ok, "hello\n");
  auto failed = RunProgramChecked({.argv = {"sh", "-c", "echo broken >&2; exit 4"}});
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code(), ErrorCode::kIo);
  EXPECT_EQ(failed.error().message(),
            "`sh -c echo broken >&2; exit 4` failed (exit status 4): broken");
}

TEST(ProcessTest, StartedProgramRunsInItsOwnSession) {
  auto captured = StartProgram({.argv = {"true"}});
  ASSERT_FALSE(captured);
  EXPECT_EQ(captured.error().code(), ErrorCode::kInvalidArgument);

  auto pid = StartProgram({.argv = {"sh", "-c", "exec sleep 1000"},
                           .output = ProgramOutput::kFile,
                           .output_file = "/dev/null"});
  ASSERT_TRUE(pid) << pid.error().ToString();
  EXPECT_EQ(::getsid(*pid), *pid);
  ASSERT_EQ(::kill(*pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(*pid, &status, 0), *pid);
  EXPECT_TRUE(WIFSIGNALED(status));
}

// ---- command lines ----

struct Flags {
  bool json = false;
  std::string out = "default";
  std::optional<std::string> tries;
  std::vector<std::string> env;
  std::vector<std::pair<std::string, std::string>> binds;
  std::vector<std::string> operands;
};

cli::Parser MakeParser(Flags& flags) {
  cli::Parser parser("tool", "usage: tool [--json] [-o OUT] ...\n");
  parser.Flag("--json", &flags.json);
  parser.Option("-o,--out", &flags.out);
  parser.Option("--tries", &flags.tries);
  parser.Repeated("--env", &flags.env);
  parser.Ordered("--ro-bind", &flags.binds);
  parser.Ordered("--bind", &flags.binds);
  parser.Operands(&flags.operands);
  return parser;
}

TEST(CliTest, ParsesFlagsOptionsRepeatsAndOperands) {
  Flags flags;
  cli::Parser parser = MakeParser(flags);
  std::vector<std::string> args = {
      "a",     "--json", "--out=x", "--env", "A=1", "--env", "B=2", "--bind", "/s:/d", "--ro-bind",
      "/r:/e", "--bind", "/t:/f",   "-o",    "y",   "b",     "--",  "--json", "-o"};
  auto outcome = parser.TryParse(args);
  ASSERT_TRUE(outcome) << outcome.error().ToString();
  EXPECT_EQ(*outcome, cli::ParseOutcome::kRun);
  EXPECT_TRUE(flags.json);
  EXPECT_EQ(flags.out, "y");  // given twice: the last counts
  EXPECT_EQ(flags.tries, std::nullopt);
  EXPECT_EQ(flags.env, (std::vector<std::string>{"A=1", "B=2"}));
  using Binds = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(flags.binds, (Binds{{"--bind", "/s:/d"}, {"--ro-bind", "/r:/e"}, {"--bind", "/t:/f"}}));
  EXPECT_EQ(flags.operands, (std::vector<std::string>{"a", "b", "--json", "-o"}));
}

TEST(CliTest, DefaultsStayWhenAnOptionIsAbsent) {
  Flags flags;
  cli::Parser parser = MakeParser(flags);
  std::vector<std::string> args = {"--tries", "3"};
  ASSERT_TRUE(parser.TryParse(args));
  EXPECT_EQ(flags.out, "default");
  EXPECT_EQ(flags.tries, "3");
  EXPECT_FALSE(flags.json);

  Flags empty;
  cli::Parser with_empty = MakeParser(empty);
  std::vector<std::string> empty_values = {"--tries=", "--out", ""};
  auto parsed = with_empty.TryParse(empty_values);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(empty.tries, "");
  EXPECT_EQ(empty.out, "");
}

TEST(CliTest, UsageErrorsNameTheBadFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"--frobnicate"}, "unknown option --frobnicate"},
      {{"--frobnicate=1"}, "unknown option --frobnicate"},
      {{"--tries"}, "option --tries needs a value"},
      {{"--json=yes"}, "option --json takes no value"},
  };
  for (const Case& c : cases) {
    Flags flags;
    cli::Parser parser = MakeParser(flags);
    auto outcome = parser.TryParse(c.args);
    ASSERT_FALSE(outcome) << c.message;
    EXPECT_EQ(outcome.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(outcome.error().message(), c.message);
  }
  // Without Operands, an operand is unexpected.
  cli::Parser strict("strict");
  std::vector<std::string> operand = {"stray"};
  auto stray = strict.TryParse(operand);
  ASSERT_FALSE(stray);
  EXPECT_EQ(stray.error().message(), "unexpected argument \"stray\"");
}

TEST(CliTest, ParseExitsTwoOnUsageErrorsAndZeroAfterHelp) {
  Flags flags;
  cli::Parser parser = MakeParser(flags);
  std::vector<std::string> bad = {"--nope"};
  ::testing::internal::CaptureStderr();
  std::optional<int> exit = parser.Parse(bad);
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(exit, cli::kExitUsage);
  EXPECT_EQ(err, "tool: unknown option --nope\n(see `tool --help`)\n");

  Flags more;
  cli::Parser helped = MakeParser(more);
  std::vector<std::string> help = {"--tries", "x", "--help", "--nope"};
  ::testing::internal::CaptureStdout();
  exit = helped.Parse(help);
  std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(exit, 0);
  EXPECT_EQ(out, "usage: tool [--json] [-o OUT] ...\n");

  Flags fine;
  cli::Parser ok = MakeParser(fine);
  std::vector<std::string> good = {"--json"};
  EXPECT_EQ(ok.Parse(good), std::nullopt);
}

}  // namespace
}  // namespace ralph
