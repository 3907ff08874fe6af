// VAR through Rescue with the real e2fsprogs on an image file: a VAR that
// holds no filesystem is found unusable, the automatic plan recreates it,
// and e2fsck -n then finds it clean; a clean VAR is left alone; the
// operator's menu resets it only after the confirmation word.
#include <gtest/gtest.h>

#include <filesystem>

#include "drivers/testing/fake_block_device.h"
#include "fake_audit_sink.h"
#include "machine.h"
#include "platform/file_io.h"
#include "platform/process.h"
#include "recovery/menu.h"
#include "recovery/rescue.h"
#include "tests/support/temp_dir.h"

namespace ralph::recovery {
namespace {

constexpr uint64_t kVarBytes = 16 << 20;

class RescueVarTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* tool : {"/sbin/e2fsck", "/sbin/mke2fs"}) {
      ASSERT_TRUE(std::filesystem::exists(tool))
          << tool << " is missing (Debian package e2fsprogs)";
    }
    machine_ = boot::Machine::Provisioned();
    var_ = dir_.path() + "/var.img";
    // Not an ext4: bytes a torn write or another system left.
    ASSERT_TRUE(WriteWholeFile(var_, std::string(kVarBytes, '\x5a')));
  }
  std::unique_ptr<Rescue> Make() {
    DiskLayout layout = boot::TestLayout();
    for (auto& part : layout.partitions) {
      if (part.label == "VAR") part.device = var_;
    }
    RescueConfig config;
    config.kernel_cmdline = "ralph.slot=recovery";
    config.factory_bundle = dir_.path() + "/none.rbundle";
    config.keyring = dir_.path() + "/keyring";
    config.var_mounted = false;  // early boot could not mount it
    config.audit = &audit_;
    auto rescue =
        Rescue::Create(machine_.vars(), layout, config,
                       [](const PartitionInfo&) -> Result<std::unique_ptr<BlockDeviceInterface>> {
                         return std::unique_ptr<BlockDeviceInterface>(
                             std::make_unique<ralph::testing::FakeBlockDevice>(1 << 20));
                       });
    EXPECT_TRUE(rescue) << rescue.error().ToString();
    return std::move(*rescue);
  }
  ralph::testing::TempDir dir_;
  boot::Machine machine_;
  std::string var_;
  audit::testing::FakeAuditSink audit_;
};

TEST_F(RescueVarTest, AnUnusableVarIsRecreatedByItselfAndThenChecksClean) {
  auto rescue = Make();
  auto before = rescue->Diagnose();
  ASSERT_TRUE(before) << before.error().ToString();
  EXPECT_EQ(before->var.health, VarHealth::kUnusable) << before->var.detail;
  EXPECT_NE(before->var.detail.find("e2fsck -n " + var_), std::string::npos) << before->var.detail;
  Decision decision = Decide(*before);
  ASSERT_FALSE(decision.actions.empty());
  EXPECT_EQ(decision.actions.front().kind, ActionKind::kResetVar);
  auto done = rescue->Apply(decision);
  ASSERT_TRUE(done) << done.error().ToString();
  EXPECT_NE(done->front().find("recreated empty"), std::string::npos) << done->front();
  auto after = rescue->Diagnose();
  ASSERT_TRUE(after);
  EXPECT_EQ(after->var.health, VarHealth::kClean) << after->var.detail;
  // Labelled VAR, as early boot makes it.
  auto label = RunProgram({.argv = {"/sbin/e2label", var_}});
  ASSERT_TRUE(label) << label.error().ToString();
  EXPECT_EQ(label->out, "VAR\n");
  // The reset was recorded before the filesystem went.
  EXPECT_EQ(audit_.Types(), std::vector<std::string>{"var-reset"});
  // A clean VAR: nothing to do about it.
  for (const Action& a : Decide(*after).actions) EXPECT_NE(a.kind, ActionKind::kResetVar);
}

TEST_F(RescueVarTest, AVarWithErrorsWaitsForTheOperator) {
  auto made = RunProgram({.argv = {"/sbin/mke2fs", "-q", "-F", "-t", "ext4", var_}});
  ASSERT_TRUE(made && made->ok());
  // Clear the root directory's inode: e2fsck -n finds the errors and
  // cannot go on (exit status 12); e2fsck -y could still repair it.
  auto broke = RunProgram({.argv = {"/sbin/debugfs", "-w", "-R", "clri <2>", var_}});
  ASSERT_TRUE(broke && broke->ok()) << (broke ? broke->err : broke.error().ToString());
  auto rescue = Make();
  auto d = rescue->Diagnose();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->var.health, VarHealth::kErrors) << d->var.detail;
  for (const Action& a : Decide(*d).actions) EXPECT_NE(a.kind, ActionKind::kResetVar);
}

// The operator's menu driven with scripted console lines.
struct ScriptedConsole {
  std::vector<std::string> lines;
  size_t next = 0;
  std::string out;
  int reboots = 0;
  MenuIo Io() {
    MenuIo io;
    io.read_line = [this]() -> std::optional<std::string> {
      if (next == lines.size()) return std::nullopt;
      return lines[next++];
    };
    io.write_line = [this](const std::string& line) { out += line + "\n"; };
    io.reboot = [this]() { ++reboots; };
    return io;
  }
};

TEST_F(RescueVarTest, TheMenuRefusesGarbageAndResetsVarOnlyAfterConfirmation) {
  auto rescue = Make();
  ScriptedConsole console;
  console.lines = {"format c:", "\x1b[A\x1b[A", std::string(1000, 'x'),
                   "",          "restore q",    "status",
                   "reboot b",  "reset-var",    "yes",
                   "reset-var", "ERASE\r",      "status"};
  EXPECT_EQ(RunMenu(*rescue, console.Io()), MenuEnd::kEndOfInput);
  const std::string& out = console.out;
  EXPECT_NE(out.find("refused: unknown command 'format' (type help)"), std::string::npos) << out;
  EXPECT_NE(out.find("refused: unexpected byte 0x1b at column 1"), std::string::npos) << out;
  EXPECT_NE(out.find("refused: line too long (1000 bytes, at most 256)"), std::string::npos);
  size_t first_status = out.find("VAR: unusable");
  EXPECT_NE(first_status, std::string::npos) << out;
  EXPECT_NE(out.find("failed: slot B is empty, neither committed nor on trial"), std::string::npos)
      << out;
  size_t refused = out.find("not confirmed: VAR left as it is");
  size_t reset = out.find("recreated empty");
  ASSERT_NE(refused, std::string::npos) << out;
  ASSERT_NE(reset, std::string::npos) << out;
  EXPECT_LT(refused, reset);
  EXPECT_NE(out.find("VAR: clean", reset), std::string::npos) << out;
  EXPECT_EQ(console.reboots, 0);
  // Only the confirmed reset was recorded.
  EXPECT_EQ(audit_.Types(), std::vector<std::string>{"var-reset"});
}

TEST_F(RescueVarTest, TheMenuRebootsIntoTheCommittedSlot) {
  auto rescue = Make();
  ScriptedConsole console;
  console.lines = {"help", "reboot", "status"};
  EXPECT_EQ(RunMenu(*rescue, console.Io()), MenuEnd::kRebooting);
  EXPECT_NE(console.out.find("reset-var"), std::string::npos);
  EXPECT_NE(console.out.find("rebooting into the committed slot A"), std::string::npos)
      << console.out;
  EXPECT_EQ(console.reboots, 1);
  // The menu ended at the reboot: the line after it was never read.
  EXPECT_EQ(console.next, 2u);
}

}  // namespace
}  // namespace ralph::recovery
