// `ralphctl boot` as a user runs it: exit codes (0 ok, 1 failed, 2 bad
// command line), messages that name the cause, --json, and a whole
// try/commit cycle on a directory store (--efivars) and a GPT image made
// here (--disk), with ralph-firmware-sim playing the firmware.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "drivers/gpt.h"

namespace ralph {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

struct ProgramRun {
  int status = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class RalphctlBootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/ralphctl-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    efivars_ = dir_ + "/efivars";
    std::filesystem::create_directory(efivars_);
    image_ = dir_ + "/disk.img";
    Result<DiskLayout> layout = CreateGptImage(image_, 80 << 20, Spec(true));
    ASSERT_TRUE(layout.has_value()) << layout.error().ToString();
    // ctest sets RALPH_BINARY_DIR; run by hand, the test sits in <build>/tests.
    const char* build = std::getenv("RALPH_BINARY_DIR");
    bin_ =
        build
            ? std::string(build) + "/bin/"
            : std::filesystem::read_symlink("/proc/self/exe").parent_path().parent_path().string() +
                  "/bin/";
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  static GptSpec Spec(bool with_recovery) {
    GptSpec spec;
    spec.partitions = {{"EFI", 16 << 20, PartitionType::kEfiSystem, std::nullopt},
                       {"SYSTEM_A", 16 << 20, PartitionType::kLinuxFilesystem, std::nullopt},
                       {"SYSTEM_B", 16 << 20, PartitionType::kLinuxFilesystem, std::nullopt},
                       {"VAR", 0, PartitionType::kLinuxVar, std::nullopt}};
    if (with_recovery) {
      spec.partitions.back().size_bytes = 8 << 20;
      spec.partitions.push_back({"RECOVERY", 0, PartitionType::kLinuxFilesystem, std::nullopt});
    }
    return spec;
  }

  // Runs a program from the build's bin/ with stdout/stderr captured.
  ProgramRun Exec(const std::string& program, std::vector<std::string> args,
                  bool with_store_env = false) {
    std::string out_path = dir_ + "/out";
    std::string err_path = dir_ + "/err";
    args.insert(args.begin(), bin_ + program);
    pid_t pid = ::fork();
    if (pid == 0) {
      int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      ::dup2(out, 1);
      ::dup2(err, 2);
      if (with_store_env) {
        ::setenv("EFIVARFS_PATH", (efivars_ + "/").c_str(), 1);
      } else {
        ::unsetenv("EFIVARFS_PATH");
      }
      std::vector<char*> argv;
      for (std::string& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    ProgramRun run;
    run.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.out = ReadFile(out_path);
    run.err = ReadFile(err_path);
    return run;
  }

  // ralphctl boot <args> --efivars DIR --disk IMAGE
  ProgramRun Boot(std::vector<std::string> args, const std::string& cmdline = "") {
    args.insert(args.begin(), "boot");
    for (std::string extra : {"--efivars", efivars_.c_str(), "--disk", image_.c_str()}) {
      args.push_back(extra);
    }
    args.push_back("--cmdline=" + cmdline);
    return Exec("ralphctl", args);
  }

  json Status() {
    ProgramRun run = Boot({"status", "--json"});
    EXPECT_EQ(run.status, 0) << run.err;
    json parsed = json::parse(run.out, nullptr, false);
    EXPECT_FALSE(parsed.is_discarded()) << run.out;
    return parsed;
  }

  // One power-on by the firmware model; returns the booted kernel's cmdline.
  // One power-on of the firmware model; returns the image it started ("A",
  // "B", "RECOVERY": a slot's command line names no slot, ralphctl tells
  // the slot from the stub's LoaderImageIdentifier the model leaves in the
  // store) and keeps that image's command line in cmdline_.
  std::string PowerOn() {
    ProgramRun run = Exec("ralph-firmware-sim", {"--disk", image_}, true);
    EXPECT_EQ(run.status, 0) << run.err;
    cmdline_ = run.out;
    constexpr std::string_view kBooted = "firmware: booted ";
    size_t at = run.err.find(kBooted);
    if (at == std::string::npos) return run.err;
    at += kBooted.size();
    return run.err.substr(at, run.err.find(' ', at) - at);
  }

  bool StoreEmpty() { return std::filesystem::is_empty(efivars_); }

  std::string dir_, efivars_, image_, bin_;
  std::string cmdline_;  // the last PowerOn's kernel command line
};

TEST_F(RalphctlBootTest, BadCommandLinesExitTwoNamingTheProblemAndTouchNothing) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  std::vector<Case> cases = {
      {{"mark-active", "c"}, "unknown slot \"c\": expected A or B"},
      {{"mark-bad", "recovery"}, "unknown slot \"recovery\""},
      {{"status", "--frobnicate"}, "unknown option --frobnicate"},
      {{"frob"}, "unknown subcommand \"frob\""},
      {{"mark-active", "b", "--tries", "99"},
       "--tries: expected a number from 1 to 15, got \"99\""},
      {{"mark-active", "b", "--tries", "x"}, "--tries: expected a number from 1 to 15, got \"x\""},
      {{"mark-active"}, "which slot? (A or B)"},
      {{"mark-good", "--tries", "2"}, "--tries goes with mark-active and finish-write only"},
      {{"mark-bad", "a", "b"}, "unexpected argument \"b\""},
      {{"begin-write", "b"}, "--version is required"},
      {{"begin-write", "b", "--version", "1.x"}, "version \"1.x\" is not MAJOR.MINOR.PATCH"},
      {{"finish-write", "b", "--version", "1.0.0", "--digest", "abc"},
       "SHA-256 digest: expected 64 hex digits, got 3"},
  };
  for (const Case& c : cases) {
    ProgramRun run = Boot(c.args);
    EXPECT_EQ(run.status, 2) << fmt::format("{}", fmt::join(c.args, " ")) << "\n" << run.err;
    EXPECT_THAT(run.err, HasSubstr(c.message)) << fmt::format("{}", fmt::join(c.args, " "));
  }
  ProgramRun unknown = Exec("ralphctl", {"frobnicate"});
  EXPECT_EQ(unknown.status, 2);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command \"frobnicate\""));
  ProgramRun bare = Exec("ralphctl", {"boot"});
  EXPECT_EQ(bare.status, 2);
  EXPECT_THAT(bare.err, HasSubstr("missing subcommand"));
  EXPECT_TRUE(StoreEmpty());
}

TEST_F(RalphctlBootTest, ProvisionTryAndCommit) {
  json fresh = Status();
  EXPECT_TRUE(fresh["committed"].is_null());
  EXPECT_FALSE(fresh["needs_repair"].empty());

  EXPECT_EQ(PowerOn(), "A");  // empty NVRAM: the removable path
  EXPECT_THAT(cmdline_, Not(HasSubstr("ralph.slot=")));
  ProgramRun repair = Boot({"repair"}, cmdline_);
  ASSERT_EQ(repair.status, 0) << repair.err;
  EXPECT_THAT(repair.out, HasSubstr("repair: wrote"));

  PowerOn();
  json status = Status();
  EXPECT_EQ(status["booted"]["target"], "A");
  EXPECT_EQ(status["committed"], "A");
  EXPECT_EQ(status["slots"]["A"]["state"], "good");
  EXPECT_EQ(status["slots"]["B"]["state"], "empty");
  EXPECT_TRUE(status["needs_repair"].empty());
  int ours = 0;
  for (const json& entry : status["entries"]) ours += entry["kind"] == "ours";
  EXPECT_EQ(ours, 3);

  std::string digest(64, 'a');
  ASSERT_EQ(Boot({"begin-write", "b", "--version", "1.1.0"}).status, 0);
  ProgramRun finish = Boot({"finish-write", "b", "--version", "1.1.0", "--digest", digest});
  ASSERT_EQ(finish.status, 0) << finish.err;
  EXPECT_THAT(finish.out, HasSubstr("finish-write: wrote RalphSlotState, BootNext, BootOrder"));

  EXPECT_EQ(PowerOn(), "B");              // the trial boot
  ProgramRun good = Boot({"mark-good"});  // the booted slot from BootCurrent
  ASSERT_EQ(good.status, 0) << good.err;
  EXPECT_THAT(good.out, HasSubstr("mark-good: wrote RalphSlotState, BootOrder"));
  ProgramRun again = Boot({"mark-good"});
  EXPECT_THAT(again.out, HasSubstr("no change (nothing written)"));

  status = Status();
  EXPECT_EQ(status["committed"], "B");
  EXPECT_EQ(status["minimum_version"], "1.1.0");
  EXPECT_EQ(status["slots"]["B"]["digest"], digest);
  EXPECT_EQ(PowerOn(), "B");

  // The human table says the same.
  ProgramRun table = Boot({"status"});
  ASSERT_EQ(table.status, 0);
  EXPECT_THAT(table.out, HasSubstr("committed:  B    minimum version: 1.1.0"));

  // Recovery on request.
  ASSERT_EQ(Boot({"arm-recovery"}).status, 0);
  EXPECT_EQ(PowerOn(), "RECOVERY");
  EXPECT_THAT(cmdline_, HasSubstr("ralph.slot=recovery"));
  EXPECT_EQ(PowerOn(), "B");
}

TEST_F(RalphctlBootTest, FailuresExitOneNamingTheCause) {
  ASSERT_EQ(Boot({"repair"}, "ralph.slot=a").status, 0);

  ProgramRun empty = Boot({"mark-active", "b"});
  EXPECT_EQ(empty.status, 1);
  EXPECT_THAT(empty.err, HasSubstr("slot B is empty: it holds no complete image"));

  ProgramRun committed = Boot({"mark-bad", "a"});
  EXPECT_EQ(committed.status, 1);
  EXPECT_THAT(committed.err, HasSubstr("slot A is the committed slot"));

  ProgramRun unknown = Boot({"mark-good"});
  EXPECT_EQ(unknown.status, 1);
  EXPECT_THAT(unknown.err, HasSubstr("cannot tell the booted slot"));

  // A garbled record: verbs refuse, status shows it, repair fixes it.
  std::string record = efivars_ + "/RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d";
  {
    std::ofstream file(record, std::ios::binary | std::ios::trunc);
    file << std::string("\x07\x00\x00\x00garbage!", 12);
  }
  ProgramRun garbled = Boot({"mark-good"}, "ralph.slot=a");
  EXPECT_EQ(garbled.status, 1);
  EXPECT_THAT(garbled.err, HasSubstr("RalphSlotState: bad magic"));
  json status = Status();
  EXPECT_THAT(status["record_error"].get<std::string>(), HasSubstr("bad magic"));
  ProgramRun fixed = Boot({"repair"}, "ralph.slot=a");
  EXPECT_EQ(fixed.status, 0) << fixed.err;
  EXPECT_THAT(fixed.out, HasSubstr("re-initialised with slot A committed"));
  EXPECT_EQ(Status()["committed"], "A");
  EXPECT_EQ(PowerOn(), "A");
}

TEST_F(RalphctlBootTest, BadStoreOrDiskIsNamed) {
  ProgramRun no_disk =
      Exec("ralphctl", {"boot", "status", "--efivars", efivars_, "--disk", dir_ + "/missing.img"});
  EXPECT_EQ(no_disk.status, 1);
  EXPECT_THAT(no_disk.err, HasSubstr("--disk " + dir_ + "/missing.img"));

  ProgramRun no_dir = Exec("ralphctl", {"boot", "status", "--efivars", image_, "--disk", image_});
  EXPECT_EQ(no_dir.status, 1);
  EXPECT_THAT(no_dir.err, HasSubstr("not a directory"));

  ASSERT_TRUE(CreateGptImage(image_, 80 << 20, Spec(false)).has_value());
  ProgramRun partition = Boot({"status"});
  EXPECT_EQ(partition.status, 1);
  EXPECT_THAT(partition.err, HasSubstr("no partition labelled RECOVERY"));
}

}  // namespace
}  // namespace ralph
