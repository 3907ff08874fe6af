// FakeEfiVarStore itself: the failures it injects, its counters and hook.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "platform/testing/fake_efi_vars.h"

namespace ralph {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::vector<uint8_t> kData = {1, 2, 3, 4, 5, 6};

TEST(FakeEfiVarStoreTest, StoresListsAndDeletes) {
  FakeEfiVarStore store;
  ASSERT_TRUE(store.Set(kEfiGlobalGuid, "BootOrder", kData, 7).has_value());
  Result<EfiVariable> got = store.Get(kEfiGlobalGuid, "BootOrder");
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->data, kData);
  EXPECT_EQ(got->attributes, 7u);
  EXPECT_THAT(*store.List(kEfiGlobalGuid), ElementsAre("BootOrder"));
  EXPECT_TRUE(store.List(kRalphVendorGuid)->empty());
  ASSERT_TRUE(store.Delete(kEfiGlobalGuid, "BootOrder").has_value());
  ASSERT_TRUE(store.Delete(kEfiGlobalGuid, "BootOrder").has_value());  // absent: fine
  EXPECT_EQ(store.Get(kEfiGlobalGuid, "BootOrder").error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(store.sets(), 1u);
  EXPECT_EQ(store.deletes(), 1u);
  EXPECT_EQ(store.write_calls(), 3u);
  EXPECT_THAT(store.write_log(), ElementsAre("BootOrder", "-BootOrder"));
}

TEST(FakeEfiVarStoreTest, InjectedFaults) {
  FakeEfiVarStore store;
  store.InjectFault(0, EfiFault::kNoSpace);
  store.InjectFault(1, EfiFault::kIo);
  store.InjectFault(2, EfiFault::kTorn);
  Result<void> full = store.Set(kEfiGlobalGuid, "A", kData, 7);
  EXPECT_EQ(full.error().code(), ErrorCode::kNoSpace);
  EXPECT_THAT(full.error().message(), HasSubstr("ENOSPC"));
  EXPECT_EQ(store.Set(kEfiGlobalGuid, "A", kData, 7).error().code(), ErrorCode::kIo);
  EXPECT_FALSE(store.Peek(kEfiGlobalGuid, "A").has_value());
  Result<void> torn = store.Set(kEfiGlobalGuid, "A", kData, 7);
  EXPECT_EQ(torn.error().code(), ErrorCode::kIo);
  EXPECT_THAT(torn.error().message(), HasSubstr("torn"));
  EXPECT_EQ(*store.Peek(kEfiGlobalGuid, "A"), (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_TRUE(store.Set(kEfiGlobalGuid, "A", kData, 7).has_value());  // faults are one-shot
  store.SetReadOnly(true);
  EXPECT_EQ(store.Delete(kEfiGlobalGuid, "A").error().code(), ErrorCode::kReadOnly);
  EXPECT_EQ(*store.Peek(kEfiGlobalGuid, "A"), kData);
  store.SetReadOnly(false);
  store.SetReadsFail(true);
  EXPECT_EQ(store.Get(kEfiGlobalGuid, "A").error().code(), ErrorCode::kIo);
}

TEST(FakeEfiVarStoreTest, HookSeesEveryChangeAndSnapshotsRestore) {
  FakeEfiVarStore store;
  std::vector<FakeEfiVarStore::Contents> snapshots;
  store.SetWriteHook([&](const FakeEfiVarStore& s) { snapshots.push_back(s.contents()); });
  ASSERT_TRUE(store.Set(kEfiGlobalGuid, "A", kData, 7).has_value());
  ASSERT_TRUE(store.Set(kEfiGlobalGuid, "B", kData, 7).has_value());
  ASSERT_TRUE(store.Delete(kEfiGlobalGuid, "A").has_value());
  ASSERT_EQ(snapshots.size(), 3u);
  FakeEfiVarStore after_first(snapshots[0]);
  EXPECT_TRUE(after_first.Peek(kEfiGlobalGuid, "A").has_value());
  EXPECT_FALSE(after_first.Peek(kEfiGlobalGuid, "B").has_value());
  EXPECT_EQ(after_first.write_calls(), 0u);
}

}  // namespace
}  // namespace ralph
