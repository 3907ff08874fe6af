// The OTA installer's audit records, on the OTA test appliance (loop-device
// slots, a directory EFI store, a FAT ESP): a downgrade override is in the
// audit log before any byte is written, and refused when it cannot be
// recorded; installs record started / finished / failed; an unusable audit
// log never stops an ordinary install.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "audit_test_util.h"
#include "install_fixture.h"
#include "services/audit/audit_log.h"
#include "services/ota/install_audit.h"

namespace ralph::ota::testing {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class OtaAuditTest : public ApplianceFixture {
 protected:
  void SetUp() override {
    ApplianceFixture::SetUp();
    audit_path_ = dir_ / "var/lib/ralph/audit.db";
    auto log = audit::AuditLog::Open(audit_path_, audit::OpenMode::kCreateIfMissing);
    ASSERT_TRUE(log.has_value()) << log.error().ToString();
    audit_ = std::move(*log);
  }

  // 3.0.0 installed into B, booted and committed: the minimum is 3.0.0 and
  // the device runs from B. Returns a 2.5.0 bundle (below the minimum).
  std::string CommitV3AndMakeOldBundle() {
    BundleSpec v3 = DefaultSpec(3);
    v3.version = {3, 0, 0};
    InstallOptions options = Options(MakeBundle("v3.rbundle", v3));
    options.audit = audit_.get();
    auto installed = InstallAs(options.source, 'a', &options);
    EXPECT_TRUE(installed.has_value()) << installed.error().ToString();
    boot::SlotManager on_b = Manager('b');
    EXPECT_TRUE(on_b.OnBoot().has_value());
    EXPECT_TRUE(on_b.MarkGood().has_value());
    EXPECT_EQ(Record().minimum_version.ToString(), "3.0.0");
    BundleSpec v2 = DefaultSpec(2);
    v2.version = {2, 5, 0};
    return MakeBundle("v2.rbundle", v2);
  }

  std::vector<audit::AuditRecord> Rows() {
    auto rows = audit_->List();
    EXPECT_TRUE(rows.has_value()) << rows.error().ToString();
    return rows ? *rows : std::vector<audit::AuditRecord>{};
  }
  static std::vector<std::string> Types(const std::vector<audit::AuditRecord>& rows) {
    std::vector<std::string> types;
    for (const auto& row : rows) types.push_back(row.type);
    return types;
  }

  std::string audit_path_;
  std::unique_ptr<audit::AuditLog> audit_;
};

TEST_F(OtaAuditTest, InstallRecordsStartedAndFinished) {
  BundleSpec spec = DefaultSpec(5);
  InstallOptions options = Options(MakeBundle("b.rbundle", spec));
  options.audit = audit_.get();
  auto report = InstallAs(options.source, 'a', &options);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_TRUE(report->notes.empty());
  auto rows = Rows();
  ASSERT_THAT(Types(rows), ElementsAre("install-started", "install-finished"));
  EXPECT_EQ(rows[0].actor, "ota");
  EXPECT_EQ(rows[0].subject, "slot B");
  json started = json::parse(rows[0].details);
  EXPECT_EQ(started["version"], "2.0.0");
  EXPECT_EQ(started["downgrade_override"], false);
  EXPECT_EQ(started["source"], options.source);
  json finished = json::parse(rows[1].details);
  EXPECT_EQ(finished["bytes_written"].get<uint64_t>(), report->stats.bytes_written);
  EXPECT_TRUE(audit_->Verify()->ok());
}

TEST_F(OtaAuditTest, DowngradeOverrideIsRecordedBeforeAnyByteIsWritten) {
  std::string old = CommitV3AndMakeOldBundle();
  size_t before = Rows().size();
  InstallOptions options = Options(old);
  options.downgrade = DowngradeOverride::kAllow;
  options.audit = audit_.get();
  // At the first point where the target is marked `writing` (no payload
  // byte yet), the override must already be on record.
  std::vector<std::string> types_at_begin_write;
  options.hook = [&](std::string_view point) {
    if (point != "begin-write") return;
    auto rows = audit::AuditLog::Open(audit_path_, audit::OpenMode::kReadOnly);
    ASSERT_TRUE(rows.has_value());
    types_at_begin_write = Types(*(*rows)->List());
  };
  auto report = InstallAs(old, 'b', &options);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_EQ(Record().a.status, boot::SlotStatus::kTrial);

  ASSERT_GE(types_at_begin_write.size(), before + 2);
  EXPECT_EQ(types_at_begin_write[before], "downgrade-override");
  EXPECT_EQ(types_at_begin_write[before + 1], "install-started");

  auto rows = Rows();
  ASSERT_EQ(rows.size(), before + 3);
  const audit::AuditRecord& override_row = rows[before];
  EXPECT_EQ(override_row.type, "downgrade-override");
  EXPECT_EQ(override_row.subject, "slot A");
  json details = json::parse(override_row.details);
  EXPECT_EQ(details["version"], "2.5.0");
  EXPECT_EQ(details["minimum_version"], "3.0.0");
  EXPECT_EQ(details["target_slot"], "A");
  EXPECT_THAT(details["signer"].get<std::string>(), HasSubstr("signer"));
  EXPECT_THAT(details["note"].get<std::string>(),
              HasSubstr("DOWNGRADE OVERRIDE: installing 2.5.0 below the minimum"));
  EXPECT_EQ(json::parse(rows[before + 1].details)["downgrade_override"], true);
  EXPECT_EQ(rows[before + 2].type, "install-finished");
  EXPECT_TRUE(audit_->Verify()->ok());
}

// The override cannot be recorded: no audit log at all, or one that refuses
// the append (opened read-only; a read-only VAR is the ralphctl test below). The
// install is refused before the slot state or the slot changes.
TEST_F(OtaAuditTest, DowngradeOverrideRefusedWhenItCannotBeAudited) {
  std::string old = CommitV3AndMakeOldBundle();
  boot::SlotState record_before = Record();
  std::vector<uint8_t> slot_a_before = ReadSlot(boot::Slot::kA, 1 * kMiB);

  auto read_only = audit::AuditLog::Open(audit_path_, audit::OpenMode::kReadOnly);
  ASSERT_TRUE(read_only.has_value()) << read_only.error().ToString();
  struct Case {
    audit::AuditSinkInterface* sink;
    std::string expected;
  } cases[] = {
      {nullptr, "downgrade override refused: no audit log to record it in"},
      {read_only->get(),
       "downgrade override refused: it could not be recorded in the audit log: audit log " +
           audit_path_ + " was opened read-only; events cannot be appended [read-only]"},
  };
  for (const Case& c : cases) {
    InstallOptions options = Options(old);
    options.downgrade = DowngradeOverride::kAllow;
    options.audit = c.sink;
    bool wrote = false;
    options.hook = [&](std::string_view) { wrote = true; };
    auto refused = InstallAs(old, 'b', &options);
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code(), ErrorCode::kRefused);
    EXPECT_THAT(refused.error().message(), HasSubstr(c.expected));
    EXPECT_FALSE(wrote) << "the install went on past the override";
    boot::SlotState record_after = Record();
    EXPECT_EQ(record_after.a.status, record_before.a.status);
    EXPECT_EQ(record_after.a.version.ToString(), record_before.a.version.ToString());
    EXPECT_EQ(record_after.committed, boot::Slot::kB);
    EXPECT_EQ(ReadSlot(boot::Slot::kA, 1 * kMiB), slot_a_before);
  }
  EXPECT_TRUE(audit_->Verify()->ok());
}

TEST_F(OtaAuditTest, RefusedAndFailedInstallsAreRecorded) {
  BundleSpec arm = DefaultSpec(8);
  arm.arch = OtherArch();
  InstallOptions options = Options(MakeBundle("arm.rbundle", arm));
  options.audit = audit_.get();
  auto refused = InstallAs(options.source, 'a', &options);
  ASSERT_FALSE(refused.has_value());
  auto rows = Rows();
  ASSERT_THAT(Types(rows), ElementsAre("install-failed"));
  EXPECT_EQ(rows[0].subject, "no target slot");
  json details = json::parse(rows[0].details);
  EXPECT_THAT(details["error"].get<std::string>(),
              HasSubstr("bundle is for ralphos/" + OtherArch()));
  EXPECT_EQ(details["code"], "refused");

  // A downgrade attempt without the override is on record too.
  std::string old = CommitV3AndMakeOldBundle();
  auto downgrade = InstallAs(old, 'b');  // no audit sink: nothing recorded
  ASSERT_FALSE(downgrade.has_value());
  InstallOptions audited = Options(old);
  audited.audit = audit_.get();
  ASSERT_FALSE(InstallAs(old, 'b', &audited).has_value());
  rows = Rows();
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows.back().type, "install-failed");
  EXPECT_THAT(json::parse(rows.back().details)["error"].get<std::string>(),
              HasSubstr("below the minimum allowed version 3.0.0 (anti-rollback)"));
  EXPECT_TRUE(audit_->Verify()->ok());
}

// An audit log that refuses appends does not stop an ordinary install; the
// install reports what it could not record.
TEST_F(OtaAuditTest, UnwritableAuditLogDoesNotBlockAnOrdinaryInstall) {
  auto read_only = audit::AuditLog::Open(audit_path_, audit::OpenMode::kReadOnly);
  ASSERT_TRUE(read_only.has_value());
  BundleSpec spec = DefaultSpec(6);
  InstallOptions options = Options(MakeBundle("b.rbundle", spec));
  options.audit = read_only->get();
  auto report = InstallAs(options.source, 'a', &options);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kTrial);
  ASSERT_EQ(report->notes.size(), 2u);
  EXPECT_THAT(report->notes[0], HasSubstr("audit log: recording install-started failed"));
  EXPECT_THAT(report->notes[1], HasSubstr("audit log: recording install-finished failed"));
}

// `ralphctl update install --allow-downgrade` with the audit log on a VAR
// mounted read-only (a read-only bind mount in a private mount namespace,
// made with unshare(1)): refused, exit 1, nothing written.
TEST_F(OtaAuditTest, RalphctlRefusesOverrideWithReadOnlyAuditLog) {
  ASSERT_EQ(::geteuid(), 0u) << "bind mounts need root";
  const char* binary_dir = std::getenv("RALPH_BINARY_DIR");
  ASSERT_NE(binary_dir, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
  std::string old = CommitV3AndMakeOldBundle();
  boot::SlotState record_before = Record();
  std::string efivars = std::getenv("EFIVARFS_PATH");
  efivars.pop_back();
  std::string var_dir = dir_ / "var/lib/ralph";
  std::vector<std::string> install = {std::string(binary_dir) + "/bin/ralphctl",
                                      "update",
                                      "install",
                                      old,
                                      "--allow-downgrade",
                                      "--keyring",
                                      keyring_,
                                      "--efivars",
                                      efivars,
                                      "--disk",
                                      loop_->device(),
                                      "--cmdline",
                                      "ralph.slot=b",
                                      "--status-file",
                                      dir_ / "cli-status.json",
                                      "--lock",
                                      dir_ / "cli.lock",
                                      "--work-dir",
                                      dir_.path(),
                                      "--audit-db",
                                      audit_path_};
  std::string script =
      fmt::format("mount --bind {0} {0} && mount -o remount,bind,ro {0} && exec", var_dir);
  for (const std::string& arg : install) script += " '" + arg + "'";
  audit::testing::ProgramStreams run = ::ralph::testing::RunProgramStreams(
      {"unshare", "--mount", "--propagation", "private", "sh", "-c", script});
  EXPECT_EQ(run.exit, 1) << run.out << run.err;
  EXPECT_THAT(run.err, HasSubstr("downgrade override refused: the audit log cannot be opened: "
                                 "audit log " +
                                 audit_path_ + " is read-only"))
      << run.err;
  EXPECT_EQ(Record().a.status, record_before.a.status);
  EXPECT_EQ(Record().committed, boot::Slot::kB);

  // The same command with the audit log writable installs and records it.
  audit::testing::ProgramStreams allowed = ::ralph::testing::RunProgramStreams(install);
  ASSERT_EQ(allowed.exit, 0) << allowed.out << allowed.err;
  EXPECT_THAT(allowed.out, HasSubstr("installed 2.5.0 into slot A"));
  EXPECT_EQ(Record().a.status, boot::SlotStatus::kTrial);
  std::vector<std::string> types = Types(Rows());
  ASSERT_GE(types.size(), 3u);
  EXPECT_THAT(std::vector<std::string>(types.end() - 3, types.end()),
              ElementsAre("downgrade-override", "install-started", "install-finished"));
}

}  // namespace
}  // namespace ralph::ota::testing

int main(int argc, char** argv) {
  return ralph::ota::testing::RunWithEfivarDirectory(argc, argv);
}
