// The update record (services/ota/outcome.h): settling the outcome from the
// slot state, the strict JSON form, and the atomic file on disk.
#include "services/ota/outcome.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "platform/file_io.h"

namespace ralph::ota {
namespace {

using boot::Slot;
using boot::SlotStatus;

boot::SlotState StateWith(SlotStatus b_status, std::string_view b_version,
                          std::optional<Slot> committed) {
  boot::SlotState state;
  state.a.status = SlotStatus::kGood;
  state.a.version = *boot::SlotVersion::Parse("0.1.0");
  state.b.status = b_status;
  state.b.version = *boot::SlotVersion::Parse(b_version);
  state.committed = committed;
  return state;
}

TEST(SettleOutcome, TargetMarkedBadIsARollbackToTheCommittedSlot) {
  UpdateRecord pending = PendingUpdate("0.3.0", Slot::kB, "https://10.0.2.2/u.rbundle");
  EXPECT_EQ(pending.from, Slot::kA);
  auto settled = SettleOutcome(pending, StateWith(SlotStatus::kBad, "0.3.0", Slot::kA));
  ASSERT_TRUE(settled);
  EXPECT_EQ(settled->outcome, UpdateOutcome::kRolledBack);
  EXPECT_EQ(settled->summary,
            "the update to version 0.3.0 in slot B failed its trial (slot B is marked bad); the "
            "system rolled back to slot A");
  // Settled once: the next boot changes nothing.
  EXPECT_FALSE(SettleOutcome(*settled, StateWith(SlotStatus::kBad, "0.3.0", Slot::kA)));
}

TEST(SettleOutcome, TargetGoodAndCommittedIsCommitted) {
  UpdateRecord pending = PendingUpdate("0.2.0", Slot::kB, "/tmp/u.rbundle");
  auto settled = SettleOutcome(pending, StateWith(SlotStatus::kGood, "0.2.0", Slot::kB));
  ASSERT_TRUE(settled);
  EXPECT_EQ(settled->outcome, UpdateOutcome::kCommitted);
  EXPECT_EQ(settled->summary,
            "the update to version 0.2.0 in slot B passed its trial and is committed");
}

TEST(SettleOutcome, StillOnTrialOrRewrittenStaysPending) {
  UpdateRecord pending = PendingUpdate("0.2.0", Slot::kB, "/tmp/u.rbundle");
  EXPECT_FALSE(SettleOutcome(pending, StateWith(SlotStatus::kTrial, "0.2.0", Slot::kA)));
  // Good but A still committed: not (yet) this update's commit.
  EXPECT_FALSE(SettleOutcome(pending, StateWith(SlotStatus::kGood, "0.2.0", Slot::kA)));
  // B now holds another version (a later install): this record says nothing about it.
  EXPECT_FALSE(SettleOutcome(pending, StateWith(SlotStatus::kBad, "0.4.0", Slot::kA)));
}

TEST(UpdateRecordJson, RoundTripsAndIsStrict) {
  UpdateRecord record = PendingUpdate("1.2.3", Slot::kA, "https://h/x");
  auto back = UpdateRecordFromJson(UpdateRecordToJson(record));
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, record);

  auto garbage = UpdateRecordFromJson("not json");
  ASSERT_FALSE(garbage);
  EXPECT_EQ(garbage.error().code(), ErrorCode::kCorrupt);

  std::string extra = UpdateRecordToJson(record);
  extra.insert(1, "\"color\":\"red\",");
  auto unknown = UpdateRecordFromJson(extra);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message().find("unknown field 'color'"), std::string::npos);

  auto missing = UpdateRecordFromJson(
      R"({"version":"1","target":"B","from":"A","source":"s","outcome":"committed"})");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("field 'summary' missing"), std::string::npos)
      << missing.error().ToString();

  auto bad_slot = UpdateRecordFromJson(
      R"({"version":"1","target":"C","from":"A","source":"s","outcome":"committed","summary":""})");
  ASSERT_FALSE(bad_slot);
  EXPECT_NE(bad_slot.error().ToString().find("target"), std::string::npos)
      << bad_slot.error().ToString();

  auto bad_outcome = UpdateRecordFromJson(
      R"({"version":"1","target":"B","from":"A","source":"s","outcome":"maybe","summary":""})");
  ASSERT_FALSE(bad_outcome);
  EXPECT_NE(bad_outcome.error().ToString().find("unknown update outcome 'maybe'"),
            std::string::npos);
}

TEST(UpdateRecordFile, WritesAtomicallyAndReadsBack) {
  std::string dir =
      fmt::format("{}/ota-outcome-{}", std::filesystem::temp_directory_path().string(), ::getpid());
  std::filesystem::remove_all(dir);
  std::string path = dir + "/var/lib/ralph/ota/last-update.json";
  auto absent = ReadUpdateRecord(path);
  ASSERT_FALSE(absent);
  EXPECT_EQ(absent.error().code(), ErrorCode::kNotFound);

  UpdateRecord record = PendingUpdate("0.2.0", Slot::kB, "/x");
  ASSERT_TRUE(WriteUpdateRecord(path, record));  // creates the directories
  auto read = ReadUpdateRecord(path);
  ASSERT_TRUE(read) << read.error().ToString();
  EXPECT_EQ(*read, record);
  // Only the record is left in its directory: no temporary file.
  size_t entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/var/lib/ralph/ota")) {
    EXPECT_EQ(entry.path().string(), path);
    ++entries;
  }
  EXPECT_EQ(entries, 1u);

  ASSERT_TRUE(WriteWholeFile(path, "{\"version\":"));
  auto corrupt = ReadUpdateRecord(path);
  ASSERT_FALSE(corrupt);
  EXPECT_EQ(corrupt.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(corrupt.error().ToString().find(path), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ralph::ota
