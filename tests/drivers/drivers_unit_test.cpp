// Unit tests of the pure parts of drivers/: GPT planning and the appliance
// layout check.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "drivers/disk.h"
#include "drivers/gpt.h"

namespace ralph {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1024 * 1024;

GptSpec ApplianceSpec() {
  GptSpec spec;
  spec.partitions = {
      {"EFI", 64 * kMiB, PartitionType::kEfiSystem, std::nullopt},
      {"SYSTEM_A", 100 * kMiB, PartitionType::kLinuxRootX86_64, std::nullopt},
      {"SYSTEM_B", 100 * kMiB, PartitionType::kLinuxRootX86_64, std::nullopt},
      {"RECOVERY", 50 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt},
      {"VAR", 0, PartitionType::kLinuxVar, std::nullopt},
  };
  return spec;
}

TEST(PlanGptTest, AlignsEverythingToOneMiB) {
  auto plan = PlanGpt(512 * kMiB, 512, ApplianceSpec());
  ASSERT_TRUE(plan) << plan.error().ToString();
  ASSERT_EQ(plan->size(), 5u);
  EXPECT_EQ((*plan)[0].number, 1u);
  EXPECT_EQ((*plan)[0].start_lba, 2048u);
  EXPECT_EQ((*plan)[0].size_lba, 64u * 2048);
  EXPECT_EQ((*plan)[1].start_lba, 2048u + 64 * 2048);
  EXPECT_EQ((*plan)[4].number, 5u);
  for (const PlannedPartition& p : *plan) {
    EXPECT_EQ(p.start_lba % 2048, 0u);
    EXPECT_EQ(p.size_lba % 2048, 0u);
  }
  // The rest-of-disk partition ends before the backup GPT (33 sectors) and
  // leaves less than 1 MiB unused.
  const PlannedPartition& last = plan->back();
  uint64_t total = 512 * kMiB / 512;
  EXPECT_LE(last.start_lba + last.size_lba, total - 33);
  EXPECT_GT(last.start_lba + last.size_lba + 2048, total - 33);
}

TEST(PlanGptTest, RoundsSizesUpAndSupports4KSectors) {
  GptSpec spec;
  spec.partitions = {{"A", 1, PartitionType::kLinuxFilesystem, std::nullopt},
                     {"B", kMiB + 1, PartitionType::kLinuxFilesystem, std::nullopt}};
  auto plan = PlanGpt(16 * kMiB, 4096, spec);
  ASSERT_TRUE(plan) << plan.error().ToString();
  EXPECT_EQ((*plan)[0].start_lba, 256u);
  EXPECT_EQ((*plan)[0].size_lba, 256u);
  EXPECT_EQ((*plan)[1].size_lba, 512u);
}

TEST(PlanGptTest, ExactFitAndOneByteTooMuch) {
  // 8 MiB disk: 1 MiB head, then usable up to total - 34; a 6 MiB partition
  // fits, a 7 MiB one does not (it would overlap the backup GPT).
  GptSpec fits;
  fits.partitions = {{"A", 6 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt}};
  EXPECT_TRUE(PlanGpt(8 * kMiB, 512, fits));
  GptSpec too_big;
  too_big.partitions = {{"A", 7 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt}};
  auto plan = PlanGpt(8 * kMiB, 512, too_big);
  ASSERT_FALSE(plan);
  EXPECT_EQ(plan.error().code(), ErrorCode::kNoSpace);
  EXPECT_THAT(plan.error().message(), HasSubstr("partition 1 (A) of 7 MiB does not fit"));
}

TEST(PlanGptTest, RejectsBadSpecsNamingTheProblem) {
  struct Case {
    GptSpec spec;
    std::string why;
    ErrorCode code = ErrorCode::kInvalidArgument;
  };
  auto with = [](std::vector<PartitionSpec> partitions) {
    GptSpec spec;
    spec.partitions = std::move(partitions);
    return spec;
  };
  GptSpec bad_disk_guid = ApplianceSpec();
  bad_disk_guid.disk_uuid = "not-a-guid";
  std::vector<Case> cases = {
      {with({}), "at least one partition"},
      {with({{"", kMiB, PartitionType::kLinuxFilesystem, std::nullopt}}), "has no label"},
      {with({{std::string(37, 'x'), kMiB, PartitionType::kLinuxFilesystem, std::nullopt}}),
       "label is 37 characters"},
      {with({{"A\n", kMiB, PartitionType::kLinuxFilesystem, std::nullopt}}), "printable ASCII"},
      {with({{"A", kMiB, PartitionType::kLinuxFilesystem, std::nullopt},
             {"A", kMiB, PartitionType::kLinuxFilesystem, std::nullopt}}),
       "label A is used twice"},
      {with({{"A", 0, PartitionType::kLinuxFilesystem, std::nullopt},
             {"B", kMiB, PartitionType::kLinuxFilesystem, std::nullopt}}),
       "only allowed for the last"},
      {with({{"A", kMiB, PartitionType::kLinuxFilesystem, "1234"}}), "partition GUID"},
      {with({{"A", kMiB, PartitionType::kLinuxFilesystem, "0fc63daf-8483-4772-8e79-3d69d8477de4"},
             {"B", kMiB, PartitionType::kLinuxFilesystem, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}}),
       "used twice"},
      {bad_disk_guid, "disk GUID"},
      {ApplianceSpec(), "too small", ErrorCode::kNoSpace},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    uint64_t disk = i + 1 == cases.size() ? kMiB : 512 * kMiB;
    auto plan = PlanGpt(disk, 512, cases[i].spec);
    ASSERT_FALSE(plan) << "case " << i;
    EXPECT_EQ(plan.error().code(), cases[i].code) << "case " << i;
    EXPECT_THAT(plan.error().message(), HasSubstr(cases[i].why)) << "case " << i;
  }
  auto sector = PlanGpt(512 * kMiB, 520, ApplianceSpec());
  ASSERT_FALSE(sector);
  EXPECT_THAT(sector.error().message(), HasSubstr("sector size 520"));
}

TEST(PartitionTypeTest, Guids) {
  EXPECT_EQ(PartitionTypeGuid(PartitionType::kEfiSystem), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
  EXPECT_EQ(PartitionTypeGuid(PartitionType::kLinuxFilesystem),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
}

DiskLayout Layout(std::vector<std::string> labels) {
  DiskLayout layout;
  layout.disk = "disk.img";
  uint32_t n = 1;
  for (std::string& label : labels) {
    PartitionInfo p;
    p.label = std::move(label);
    p.number = n++;
    layout.partitions.push_back(p);
  }
  return layout;
}

TEST(ApplianceLayoutTest, CompleteLayoutPasses) {
  DiskLayout layout = Layout({"EFI", "SYSTEM_A", "SYSTEM_B", "VAR", "RECOVERY", "EXTRA"});
  EXPECT_TRUE(CheckApplianceLayout(layout));
  ASSERT_NE(layout.Find("VAR"), nullptr);
  EXPECT_EQ(layout.Find("VAR")->number, 4u);
  EXPECT_EQ(layout.Find("NOPE"), nullptr);
}

TEST(ApplianceLayoutTest, MissingPartitionsAreNamed) {
  auto one = CheckApplianceLayout(Layout({"EFI", "SYSTEM_A", "SYSTEM_B", "VAR"}));
  ASSERT_FALSE(one);
  EXPECT_EQ(one.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(one.error().message(),
              HasSubstr("disk.img is not an appliance disk: no partition labelled RECOVERY"));
  auto two = CheckApplianceLayout(Layout({"EFI", "SYSTEM_A", "VAR"}));
  ASSERT_FALSE(two);
  EXPECT_THAT(two.error().message(), HasSubstr("no partition labelled SYSTEM_B, RECOVERY"));
  auto none = CheckApplianceLayout(Layout({}));
  ASSERT_FALSE(none);
  EXPECT_THAT(none.error().message(),
              HasSubstr("no partition labelled EFI, SYSTEM_A, SYSTEM_B, VAR, RECOVERY"));
}

TEST(ApplianceLayoutTest, DuplicateLabelsAreRefused) {
  auto dup =
      CheckApplianceLayout(Layout({"EFI", "SYSTEM_A", "SYSTEM_B", "VAR", "RECOVERY", "SYSTEM_A"}));
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(dup.error().message(),
              HasSubstr("2 partitions are labelled SYSTEM_A (numbers 2, 6)"));
}

}  // namespace
}  // namespace ralph
