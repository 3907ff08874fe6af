// Rescue (the layer under ralph-recovery) over the fake NVRAM of the boot
// tests and fake slot devices: the diagnosis read from the slot manager's
// record and entries, the entry repair, the reboot check, audit records.
#include "recovery/rescue.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "drivers/testing/fake_block_device.h"
#include "fake_audit_sink.h"
#include "machine.h"
#include "platform/file_io.h"
#include "platform/load_option.h"
#include "platform/sha256.h"
#include "squashfs_shape.h"
#include "tests/support/temp_dir.h"

namespace ralph::recovery {
namespace {

using boot::Slot;
using boot::SlotStatus;
using ralph::testing::FakeBlockDevice;

constexpr uint64_t kSlotBytes = 256 << 10;

class RescueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    machine_ = boot::Machine::Provisioned();
    contents_["SYSTEM_A"] = SlotShapedImage(30000, 1);
    contents_["SYSTEM_B"] = std::vector<uint8_t>(kSlotBytes, 0x42);  // garbage
  }
  std::unique_ptr<Rescue> Make() {
    RescueConfig config;
    config.kernel_cmdline = "ralph.slot=recovery";
    config.factory_bundle = "/nonexistent/factory.rbundle";
    config.keyring = "/nonexistent/keyring";
    config.var_mounted = true;
    if (!var_mount_.empty()) config.var_mount = var_mount_;
    config.var_state = "clean";
    config.audit = &audit_;
    auto rescue = Rescue::Create(
        machine_.vars(), boot::TestLayout(), config,
        [this](const PartitionInfo& part) -> Result<std::unique_ptr<BlockDeviceInterface>> {
          auto it = contents_.find(part.label);
          if (it == contents_.end()) return Error::Make(ErrorCode::kNotFound, part.label);
          auto device = std::make_unique<FakeBlockDevice>(kSlotBytes);
          TRY(device->WriteAt(0, it->second));
          return std::unique_ptr<BlockDeviceInterface>(std::move(device));
        });
    EXPECT_TRUE(rescue) << rescue.error().ToString();
    return std::move(*rescue);
  }

  boot::Machine machine_;
  std::string var_mount_;
  std::map<std::string, std::vector<uint8_t>> contents_;
  audit::testing::FakeAuditSink audit_;
};

TEST_F(RescueTest, DiagnosesTheProvisionedMachine) {
  auto rescue = Make();
  auto d = rescue->Diagnose();
  ASSERT_TRUE(d) << d.error().ToString();
  ASSERT_TRUE(d->record);
  EXPECT_EQ(d->record->committed, Slot::kA);
  EXPECT_EQ(d->a.content, SlotContent::kUnverified) << d->a.detail;
  EXPECT_EQ(d->b.content, SlotContent::kNotAnImage) << d->b.detail;
  EXPECT_TRUE(d->entries.needs_repair.empty());
  EXPECT_EQ(d->var.health, VarHealth::kClean);
  EXPECT_EQ(d->factory.health, BundleHealth::kMissing);
  EXPECT_EQ(d->entry, EntryPath::kUnknown);
  EXPECT_TRUE(SlotUsable(*d, Slot::kA));
  Decision decision = Decide(*d);
  EXPECT_TRUE(decision.actions.empty());
  EXPECT_TRUE(decision.wait_for_operator);
  // Diagnosing writes no variable.
  EXPECT_EQ(machine_.vars().changes(), 0u);
}

TEST_F(RescueTest, ASlotWhoseImageChangedSinceItWasRecordedIsNotUsable) {
  // The record names A's digest; the partition then changes.
  boot::SlotState record = machine_.Record();
  record.a.digest = *Sha256::Of(contents_["SYSTEM_A"]);
  std::vector<uint8_t> encoded = boot::EncodeSlotState(record);
  ASSERT_TRUE(machine_.vars().Set(kRalphVendorGuid, std::string(boot::kSlotStateVariable), encoded,
                                  kEfiVariableDefaultAttributes));
  auto rescue = Make();
  auto good = rescue->Diagnose();
  ASSERT_TRUE(good);
  EXPECT_EQ(good->a.content, SlotContent::kMatches) << good->a.detail;
  contents_["SYSTEM_A"][20000] ^= 1;
  auto changed = rescue->Diagnose();
  ASSERT_TRUE(changed);
  EXPECT_EQ(changed->a.content, SlotContent::kMismatch);
  EXPECT_FALSE(SlotUsable(*changed, Slot::kA));
  // No usable slot and no factory bundle: waits, naming the bundle.
  Decision decision = Decide(*changed);
  ASSERT_TRUE(decision.wait_for_operator);
  EXPECT_NE(decision.wait_for_operator->find("no bundle at /nonexistent/factory.rbundle"),
            std::string::npos)
      << *decision.wait_for_operator;
}

TEST_F(RescueTest, RepairsAMissingBootEntryAndAuditsIt) {
  auto rescue = Make();
  auto before = rescue->Diagnose();
  ASSERT_TRUE(before);
  const boot::BootEntry* a = nullptr;
  {
    auto raw = boot::ReadRawVariables(machine_.vars());
    ASSERT_TRUE(raw);
    boot::FirmwareView view = boot::DecodeFirmwareView(*raw, boot::TestEsp());
    a = view.Find(boot::BootTarget::kSlotA);
    ASSERT_NE(a, nullptr);
    machine_.vars().Erase(kEfiGlobalGuid, BootEntryName(a->number));
  }
  auto broken = rescue->Diagnose();
  ASSERT_TRUE(broken);
  EXPECT_FALSE(broken->entries.needs_repair.empty());
  Decision decision = Decide(*broken);
  ASSERT_FALSE(decision.actions.empty());
  EXPECT_EQ(decision.actions.front().kind, ActionKind::kRepairEntries);
  auto done = rescue->Apply(decision);
  ASSERT_TRUE(done) << done.error().ToString();
  ASSERT_EQ(done->size(), 1u);
  EXPECT_NE((*done)[0].find("boot entries repaired: wrote"), std::string::npos) << (*done)[0];
  auto after = rescue->Diagnose();
  ASSERT_TRUE(after);
  EXPECT_TRUE(after->entries.needs_repair.empty());
  // The record is untouched by a RECOVERY repair.
  EXPECT_EQ(machine_.Record().committed, Slot::kA);
  std::vector<std::string> types = audit_.Types();
  ASSERT_EQ(types.size(), 1u);
  EXPECT_EQ(types[0], "boot-entries-repaired");
  EXPECT_EQ(audit_.events()[0].actor, "recovery");
  // In order now: nothing written, nothing audited.
  auto again = rescue->RepairEntries();
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, "boot entries already in order");
  EXPECT_EQ(audit_.Types().size(), 1u);
}

TEST_F(RescueTest, RebootGoesOnlyToACommittedSlotOrOneOnTrial) {
  auto rescue = Make();
  auto committed = rescue->CheckReboot(std::nullopt);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(*committed, "rebooting into the committed slot A");
  auto b = rescue->CheckReboot(Slot::kB);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code(), ErrorCode::kRefused);
  EXPECT_NE(b.error().message().find("slot B is empty, neither committed nor on trial"),
            std::string::npos)
      << b.error().message();
}

TEST_F(RescueTest, RestoreRefusesAMissingBundleAndAuditsTheRefusal) {
  auto rescue = Make();
  auto restored = rescue->Restore(Slot::kB, "");
  ASSERT_FALSE(restored);
  EXPECT_EQ(restored.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(audit_.Types(), std::vector<std::string>{"restore-refused"});
  // The slot state is as it was: nothing was begun.
  EXPECT_EQ(machine_.Record().b.status, SlotStatus::kEmpty);
}

TEST_F(RescueTest, EarlyBootsNoteNamesTheBootFailuresEntryUntilAcknowledged) {
  ralph::testing::TempDir var;
  var_mount_ = var.path();
  std::filesystem::create_directories(var.path() + "/lib/ralph");
  ASSERT_TRUE(WriteWholeFile(var.path() + "/lib/ralph/recovery-armed",
                             "slot A failed to reach a healthy state 3 boots in a row\n"));
  auto rescue = Make();
  auto d = rescue->Diagnose();
  ASSERT_TRUE(d) << d.error().ToString();
  EXPECT_EQ(d->entry, EntryPath::kBootFailures);
  EXPECT_EQ(d->entry_detail, "slot A failed to reach a healthy state 3 boots in a row");
  EXPECT_NE(DescribeDiagnosis(*d)[0].find("failed to boot repeatedly: slot A failed"),
            std::string::npos)
      << DescribeDiagnosis(*d)[0];
  // An intact committed slot that keeps failing: the operator decides.
  Decision decision = Decide(*d);
  ASSERT_TRUE(decision.wait_for_operator);
  EXPECT_NE(decision.wait_for_operator->find("failed to boot repeatedly"), std::string::npos);
  rescue->AcknowledgeEntry();
  EXPECT_FALSE(std::filesystem::exists(var.path() + "/lib/ralph/recovery-armed"));
  auto again = rescue->Diagnose();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->entry, EntryPath::kUnknown);
}

TEST_F(RescueTest, AnAuditLogThatFailsNeverStopsRecovery) {
  audit_.Fail();
  auto rescue = Make();
  auto failed = rescue->Record("recovery-entered", "RECOVERY", "x");
  ASSERT_TRUE(failed);
  EXPECT_NE(failed->find("not in the audit log"), std::string::npos);
  EXPECT_TRUE(rescue->Diagnose());
}

}  // namespace
}  // namespace ralph::recovery
