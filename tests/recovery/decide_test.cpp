// Decide() over every combination of slot states, slot contents, factory
// bundle health, VAR health and entry state: the invariants that make
// recovery safe to run by itself, then the named cases.
#include "recovery/decide.h"

#include <gtest/gtest.h>

namespace ralph::recovery {
namespace {

using boot::Slot;
using boot::SlotStatus;

constexpr SlotStatus kStatuses[] = {SlotStatus::kEmpty, SlotStatus::kWriting, SlotStatus::kTrial,
                                    SlotStatus::kGood, SlotStatus::kBad};
constexpr SlotContent kContents[] = {SlotContent::kMatches, SlotContent::kUnverified,
                                     SlotContent::kMismatch, SlotContent::kNotAnImage,
                                     SlotContent::kUnreadable};
constexpr BundleHealth kBundles[] = {BundleHealth::kValid, BundleHealth::kMissing,
                                     BundleHealth::kInvalid, BundleHealth::kIncompatible};
constexpr VarHealth kVars[] = {VarHealth::kClean, VarHealth::kErrors, VarHealth::kUnusable,
                               VarHealth::kMissing};

Sha256Digest Digest(uint8_t seed) {
  Sha256Digest d{};
  d.fill(seed);
  return d;
}

Diagnosis Healthy() {
  Diagnosis d;
  boot::SlotState record;
  record.a = {SlotStatus::kGood, 0, {1, 0, 0}, Digest(1)};
  record.b = {SlotStatus::kGood, 0, {1, 0, 0}, Digest(2)};
  record.committed = Slot::kA;
  record.minimum_version = {1, 0, 0};
  d.record = record;
  d.a = {Slot::kA, record.a, SlotContent::kMatches, ""};
  d.b = {Slot::kB, record.b, SlotContent::kMatches, ""};
  d.var = {VarHealth::kClean, ""};
  d.factory.path = "/usr/share/ralph/factory.rbundle";
  d.factory.health = BundleHealth::kValid;
  d.factory.version = {1, 0, 0};
  d.factory.rootfs_sha256 = Digest(9);
  return d;
}

void SetSlot(Diagnosis& d, Slot slot, SlotStatus status, SlotContent content) {
  boot::SlotRecord& r = d.record->slot(slot);
  r.status = status;
  SlotFacts& facts = slot == Slot::kA ? d.a : d.b;
  facts.record = r;
  facts.content = content;
  if (d.record->committed == slot && status != SlotStatus::kGood) d.record->committed.reset();
}

bool Has(const Decision& decision, ActionKind kind) {
  for (const auto& a : decision.actions) {
    if (a.kind == kind) return true;
  }
  return false;
}

TEST(DecideTest, EveryCombinationKeepsTheSafetyRules) {
  size_t cases = 0, restores = 0, waits = 0;
  for (SlotStatus sa : kStatuses) {
    for (SlotContent ca : kContents) {
      for (SlotStatus sb : kStatuses) {
        for (SlotContent cb : kContents) {
          for (BundleHealth bh : kBundles) {
            for (VarHealth vh : kVars) {
              for (bool below_minimum : {false, true}) {
                for (bool entries_broken : {false, true}) {
                  Diagnosis d = Healthy();
                  SetSlot(d, Slot::kA, sa, ca);
                  SetSlot(d, Slot::kB, sb, cb);
                  d.factory.health = bh;
                  d.var.health = vh;
                  if (below_minimum) d.record->minimum_version = {2, 0, 0};
                  if (entries_broken) d.entries.needs_repair = {"Boot0001 missing"};
                  Decision decision = Decide(d);
                  ++cases;
                  SCOPED_TRACE(testing::Message()
                               << "A " << boot::SlotStatusName(sa) << "/" << SlotContentName(ca)
                               << ", B " << boot::SlotStatusName(sb) << "/" << SlotContentName(cb)
                               << ", bundle " << BundleHealthName(bh) << ", VAR "
                               << VarHealthName(vh) << ", below minimum " << below_minimum);
                  bool usable = SlotUsable(d, Slot::kA) || SlotUsable(d, Slot::kB);
                  bool restore = Has(decision, ActionKind::kRestoreSlot);
                  // Exactly one of: act fully, or wait for the operator.
                  EXPECT_NE(decision.wait_for_operator.has_value(), restore);
                  // A usable slot is never overwritten by itself.
                  if (usable) {
                    EXPECT_FALSE(restore);
                  }
                  // Only a valid bundle at or above the minimum is written.
                  if (restore) {
                    ++restores;
                    EXPECT_EQ(bh, BundleHealth::kValid);
                    EXPECT_FALSE(below_minimum);
                    EXPECT_FALSE(usable);
                    // Restore A, then reboot into it, as the last action.
                    ASSERT_GE(decision.actions.size(), 2u);
                    EXPECT_EQ(decision.actions.back().kind, ActionKind::kReboot);
                    EXPECT_EQ(decision.actions.back().slot, Slot::kA);
                    const Action& r = decision.actions[decision.actions.size() - 2];
                    EXPECT_EQ(r.kind, ActionKind::kRestoreSlot);
                    EXPECT_EQ(r.slot, Slot::kA);
                    EXPECT_EQ(r.bundle, d.factory.path);
                  } else {
                    ++waits;
                    EXPECT_FALSE(Has(decision, ActionKind::kReboot));
                  }
                  // VAR is erased by itself only when it cannot be used at all.
                  EXPECT_EQ(Has(decision, ActionKind::kResetVar), vh == VarHealth::kUnusable);
                  EXPECT_EQ(Has(decision, ActionKind::kRepairEntries), entries_broken);
                  // Repairs and resets come before a restore and its reboot.
                  if (!decision.actions.empty() &&
                      decision.actions.front().kind == ActionKind::kRestoreSlot) {
                    EXPECT_FALSE(entries_broken);
                    EXPECT_NE(vh, VarHealth::kUnusable);
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 5u * 5 * 5 * 5 * 4 * 4 * 2 * 2);
  // Both outcomes are reached.
  EXPECT_GT(restores, 0u);
  EXPECT_GT(waits, 0u);
}

TEST(DecideTest, UsableOnlyWhenGoodAndItsContentHolds) {
  for (SlotStatus s : kStatuses) {
    for (SlotContent c : kContents) {
      Diagnosis d = Healthy();
      SetSlot(d, Slot::kB, s, c);
      bool expected =
          s == SlotStatus::kGood && (c == SlotContent::kMatches || c == SlotContent::kUnverified);
      EXPECT_EQ(SlotUsable(d, Slot::kB), expected)
          << boot::SlotStatusName(s) << " " << SlotContentName(c);
    }
  }
  Diagnosis unknown = Healthy();
  unknown.b.record.reset();
  EXPECT_FALSE(SlotUsable(unknown, Slot::kB));
}

TEST(DecideTest, BothSlotsGarbageRestoresAFromTheFactoryBundle) {
  Diagnosis d = Healthy();
  SetSlot(d, Slot::kA, SlotStatus::kTrial, SlotContent::kNotAnImage);
  SetSlot(d, Slot::kB, SlotStatus::kEmpty, SlotContent::kNotAnImage);
  Decision decision = Decide(d);
  ASSERT_EQ(decision.actions.size(), 2u);
  EXPECT_EQ(decision.actions[0].kind, ActionKind::kRestoreSlot);
  EXPECT_EQ(decision.actions[0].slot, Slot::kA);
  EXPECT_NE(decision.actions[0].why.find("version 1.0.0"), std::string::npos);
  EXPECT_FALSE(decision.wait_for_operator);
}

TEST(DecideTest, TheCommittedSlotWhoseImageNoLongerMatchesIsNotUsable) {
  Diagnosis d = Healthy();
  d.a.content = SlotContent::kMismatch;
  d.b.content = SlotContent::kNotAnImage;
  EXPECT_EQ(BootableSlot(d), std::nullopt);
  Decision decision = Decide(d);
  EXPECT_TRUE(Has(decision, ActionKind::kRestoreSlot));
}

TEST(DecideTest, BootableSlotPrefersTheCommittedOne) {
  Diagnosis d = Healthy();
  d.record->committed = Slot::kB;
  EXPECT_EQ(BootableSlot(d), Slot::kB);
  d.b.content = SlotContent::kMismatch;
  EXPECT_EQ(BootableSlot(d), Slot::kA);
}

TEST(DecideTest, BadSignatureWaitsForOperatorMediaAndSaysWhy) {
  Diagnosis d = Healthy();
  SetSlot(d, Slot::kA, SlotStatus::kBad, SlotContent::kNotAnImage);
  SetSlot(d, Slot::kB, SlotStatus::kEmpty, SlotContent::kNotAnImage);
  d.factory.health = BundleHealth::kInvalid;
  d.factory.detail = "signature does not verify";
  Decision decision = Decide(d);
  EXPECT_TRUE(decision.actions.empty());
  ASSERT_TRUE(decision.wait_for_operator);
  EXPECT_NE(decision.wait_for_operator->find("signature does not verify"), std::string::npos);
  EXPECT_NE(decision.wait_for_operator->find("operator media"), std::string::npos);
}

TEST(DecideTest, BelowTheAntiRollbackMinimumIsRefused) {
  Diagnosis d = Healthy();
  d.record->minimum_version = {1, 2, 0};
  auto r = BundleRestorable(d, d.factory);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::kRefused);
  EXPECT_NE(r.error().message().find("below the anti-rollback minimum 1.2.0"), std::string::npos);
  d.record->minimum_version = {1, 0, 0};
  EXPECT_TRUE(BundleRestorable(d, d.factory));
}

TEST(DecideTest, WithoutARecordNothingIsRestored) {
  Diagnosis d = Healthy();
  d.record.reset();
  d.record_problem = "RalphSlotState is missing";
  d.a.record.reset();
  d.b.record.reset();
  auto r = BundleRestorable(d, d.factory);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidState);
  EXPECT_NE(r.error().message().find("RalphSlotState is missing"), std::string::npos);
  Decision decision = Decide(d);
  EXPECT_FALSE(Has(decision, ActionKind::kRestoreSlot));
  EXPECT_TRUE(decision.wait_for_operator);
}

TEST(DecideTest, AFactoryImageThatAlreadyFailedInAIsNotWrittenAgain) {
  Diagnosis d = Healthy();
  SetSlot(d, Slot::kA, SlotStatus::kBad, SlotContent::kMatches);
  d.record->a.digest = d.factory.rootfs_sha256;
  d.a.record = d.record->a;
  SetSlot(d, Slot::kB, SlotStatus::kEmpty, SlotContent::kNotAnImage);
  Decision decision = Decide(d);
  EXPECT_FALSE(Has(decision, ActionKind::kRestoreSlot));
  ASSERT_TRUE(decision.wait_for_operator);
  EXPECT_NE(decision.wait_for_operator->find("already failed in slot A"), std::string::npos);
  // The same slot bad with another image: the factory image is worth a try.
  d.record->a.digest = Digest(7);
  d.a.record = d.record->a;
  EXPECT_TRUE(Has(Decide(d), ActionKind::kRestoreSlot));
}

TEST(DecideTest, RepeatedBootFailuresOfAnIntactSlotWaitForTheOperator) {
  Diagnosis d = Healthy();
  d.entry = EntryPath::kBootFailures;
  Decision decision = Decide(d);
  EXPECT_TRUE(decision.actions.empty());
  ASSERT_TRUE(decision.wait_for_operator);
  EXPECT_NE(decision.wait_for_operator->find("failed to boot repeatedly"), std::string::npos);
}

TEST(DecideTest, CheckOnlyExitStatuses) {
  EXPECT_EQ(InterpretCheckOnly(0), VarHealth::kClean);
  EXPECT_EQ(InterpretCheckOnly(1), VarHealth::kErrors);
  EXPECT_EQ(InterpretCheckOnly(4), VarHealth::kErrors);
  EXPECT_EQ(InterpretCheckOnly(8), VarHealth::kUnusable);
  // Errors found, then the check stopped: a repair may still save it.
  EXPECT_EQ(InterpretCheckOnly(12), VarHealth::kErrors);
  EXPECT_EQ(InterpretCheckOnly(16), VarHealth::kErrors);
  EXPECT_EQ(InterpretCheckOnly(32), VarHealth::kErrors);
  EXPECT_EQ(InterpretCheckOnly(128), VarHealth::kErrors);
}

TEST(DecideTest, DescriptionNamesEveryFact) {
  Diagnosis d = Healthy();
  SetSlot(d, Slot::kB, SlotStatus::kBad, SlotContent::kNotAnImage);
  d.b.detail = "no squashfs magic";
  std::vector<std::string> lines = DescribeDiagnosis(d);
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  EXPECT_NE(all.find("slot A: good (version 1.0.0); content matches its recorded digest; usable"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("slot B: bad (version 1.0.0); content holds no system image: no squashfs "
                     "magic; NOT usable"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("VAR: clean"), std::string::npos);
  EXPECT_NE(all.find("factory bundle /usr/share/ralph/factory.rbundle: valid, version 1.0.0"),
            std::string::npos);
}

TEST(MenuTest, ParsesEveryCommand) {
  auto p = [](std::string_view line) {
    auto c = ParseMenuLine(line);
    EXPECT_TRUE(c) << line << ": " << c.error().ToString();
    return c ? *c : MenuCommand{};
  };
  EXPECT_EQ(p("help").verb, MenuVerb::kHelp);
  EXPECT_EQ(p("?").verb, MenuVerb::kHelp);
  EXPECT_EQ(p("  STATUS \r\n").verb, MenuVerb::kStatus);
  EXPECT_EQ(p("auto").verb, MenuVerb::kAuto);
  EXPECT_EQ(p("repair-boot").verb, MenuVerb::kRepairBoot);
  EXPECT_EQ(p("reset-var").verb, MenuVerb::kResetVar);
  EXPECT_EQ(p("restore a"), (MenuCommand{MenuVerb::kRestore, Slot::kA, ""}));
  EXPECT_EQ(p("restore\tB /media/x.rbundle"),
            (MenuCommand{MenuVerb::kRestore, Slot::kB, "/media/x.rbundle"}));
  EXPECT_EQ(p("export-logs /dev/vdb1"), (MenuCommand{MenuVerb::kExportLogs, {}, "/dev/vdb1"}));
  EXPECT_EQ(p("reboot"), (MenuCommand{MenuVerb::kReboot, {}, ""}));
  EXPECT_EQ(p("reboot b"), (MenuCommand{MenuVerb::kReboot, Slot::kB, ""}));
}

TEST(MenuTest, RefusesGarbageNamingWhatWasWrong) {
  auto refused = [](std::string_view line, std::string_view why) {
    auto c = ParseMenuLine(line);
    ASSERT_FALSE(c) << line;
    EXPECT_EQ(c.error().code(), ErrorCode::kInvalidArgument) << line;
    EXPECT_NE(c.error().message().find(why), std::string::npos) << c.error().message();
  };
  refused("format c:", "unknown command 'format'");
  refused("restore", "restore takes 1 to 2 arguments, got 0");
  refused("restore c", "c");
  refused("restore a relative.rbundle", "must be an absolute path");
  refused("restore a /x /y", "got 3");
  refused("status now", "status takes 0 argument(s), got 1");
  refused("export-logs", "got 0");
  refused("reboot a b", "got 2");
  refused(std::string("stat\x1b[Aus"), "unexpected byte 0x1b at column 5");
  refused(std::string("st\xc3\xa4tus"), "unexpected byte 0xc3");
  refused(std::string("help\0", 5), "unexpected byte 0x00");
  refused(std::string(kMaxMenuLine + 1, 'a'), "line too long");
  auto empty = ParseMenuLine("   \r\n");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code(), ErrorCode::kNotFound);
}

TEST(MenuTest, RandomBytesNeverCrashAndAreRefusedOrParsed) {
  // Deterministic: every single byte value in every position of a short
  // command, plus every truncation of the longest one.
  std::string base = "restore a /media/factory.rbundle";
  for (size_t pos = 0; pos < base.size(); ++pos) {
    for (int b = 0; b < 256; ++b) {
      std::string line = base;
      line[pos] = static_cast<char>(b);
      auto c = ParseMenuLine(line);
      if (!c) {
        EXPECT_FALSE(c.error().message().empty());
      }
    }
  }
  for (size_t n = 0; n <= base.size(); ++n) (void)ParseMenuLine(base.substr(0, n));
}

}  // namespace
}  // namespace ralph::recovery
