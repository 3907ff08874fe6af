// Integration tests: LibefivarStore through the real libefivar against a
// directory store (EFIVARFS_PATH), including the failure modes of a real
// store: a read-only mount (kReadOnly), a full one (kNoSpace), immutable
// variable files, torn files.
//
// libefivar reads EFIVARFS_PATH once when it is loaded (see
// platform/efivar_store.h), so main() runs the tests in a child process
// started with EFIVARFS_PATH pointing at a fresh temporary directory, and
// removes the directory afterwards whatever the child did.
#include <fcntl.h>
#include <linux/fs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "platform/efivar_store.h"
#include "platform/testing/efivar_directory.h"
#include "platform/unique_fd.h"

namespace ralph {
namespace {

using ralph::testing::EfivarDirectoryPath;
using ralph::testing::ReadRawFile;
using ralph::testing::WriteRawFile;

using ::testing::HasSubstr;

int GetFlags(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  int flags = 0;
  if (!fd || ::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) < 0) return -1;
  return flags;
}

bool SetImmutable(const std::string& path, bool on) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  int flags = 0;
  if (!fd || ::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) < 0) return false;
  flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
  return ::ioctl(fd.get(), FS_IOC_SETFLAGS, &flags) == 0;
}

class EfivarStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = LibefivarStore::Open();
    ASSERT_TRUE(store) << store.error().ToString();
    store_ = std::move(*store);
    // Start each test from an empty store.
    for (const auto& entry : std::filesystem::directory_iterator(EfivarDirectoryPath())) {
      SetImmutable(entry.path(), false);
      std::filesystem::remove(entry.path());
    }
  }
  std::unique_ptr<LibefivarStore> store_;
};

TEST_F(EfivarStoreTest, OpensTheDirectoryFromEfivarfsPath) {
  EXPECT_EQ(store_->path(), EfivarDirectoryPath());
  EXPECT_FALSE(store_->is_efivarfs());
}

TEST_F(EfivarStoreTest, SetGetListDelete) {
  std::vector<uint8_t> order = {0x01, 0x00, 0x02, 0x00};
  ASSERT_TRUE(store_->Set(kEfiGlobalGuid, "BootOrder", order, kEfiVariableDefaultAttributes));
  std::vector<uint8_t> state = {'R', 'A', 'L', 'P', 'H'};
  ASSERT_TRUE(store_->Set(kRalphVendorGuid, "RalphSlotState", state,
                          kEfiVariableNonVolatile | kEfiVariableBootserviceAccess));
  ASSERT_TRUE(store_->Set(kEfiGlobalGuid, "Boot0001", {{9}}, kEfiVariableDefaultAttributes));

  // The file is exactly what efivarfs shows: 4-byte LE attributes + data.
  auto raw = ReadRawFile(EfivarDirectoryPath() + "BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c");
  EXPECT_EQ(raw, (std::vector<uint8_t>{0x07, 0, 0, 0, 0x01, 0x00, 0x02, 0x00}));

  auto got = store_->Get(kEfiGlobalGuid, "BootOrder");
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(got->data, order);
  EXPECT_EQ(got->attributes, kEfiVariableDefaultAttributes);
  auto got_state = store_->Get(kRalphVendorGuid, "RalphSlotState");
  ASSERT_TRUE(got_state);
  EXPECT_EQ(got_state->data, state);
  EXPECT_EQ(got_state->attributes, kEfiVariableNonVolatile | kEfiVariableBootserviceAccess);

  auto global = store_->List(kEfiGlobalGuid);
  ASSERT_TRUE(global) << global.error().ToString();
  EXPECT_EQ(*global, (std::vector<std::string>{"Boot0001", "BootOrder"}));
  auto vendor = store_->List(kRalphVendorGuid);
  ASSERT_TRUE(vendor);
  EXPECT_EQ(*vendor, (std::vector<std::string>{"RalphSlotState"}));

  ASSERT_TRUE(store_->Delete(kEfiGlobalGuid, "Boot0001"));
  auto gone = store_->Get(kEfiGlobalGuid, "Boot0001");
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(gone.error().message(),
              HasSubstr("reading Boot0001-8be4df61-93ca-11d2-aa0d-00e098032b8c"));
  // Deleting an absent variable succeeds.
  EXPECT_TRUE(store_->Delete(kEfiGlobalGuid, "Boot0001"));
  auto after = store_->List(kEfiGlobalGuid);
  ASSERT_TRUE(after);
  EXPECT_EQ(*after, (std::vector<std::string>{"BootOrder"}));
}

TEST_F(EfivarStoreTest, ReplacingWithShorterDataLeavesNoStaleTail) {
  ASSERT_TRUE(store_->Set(kEfiGlobalGuid, "BootOrder", {{1, 0, 2, 0, 3, 0}},
                          kEfiVariableDefaultAttributes));
  ASSERT_TRUE(store_->Set(kEfiGlobalGuid, "BootOrder", {{2, 0}}, kEfiVariableDefaultAttributes));
  auto got = store_->Get(kEfiGlobalGuid, "BootOrder");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->data, (std::vector<uint8_t>{2, 0}));
  ASSERT_TRUE(store_->Set(kEfiGlobalGuid, "BootOrder", {}, kEfiVariableDefaultAttributes));
  auto empty = store_->Get(kEfiGlobalGuid, "BootOrder");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->data.empty());
}

TEST_F(EfivarStoreTest, AttributesChangeOnRewrite) {
  ASSERT_TRUE(store_->Set(kRalphVendorGuid, "X", {{1}}, kEfiVariableDefaultAttributes));
  ASSERT_TRUE(store_->Set(kRalphVendorGuid, "X", {{1}}, kEfiVariableNonVolatile));
  auto got = store_->Get(kRalphVendorGuid, "X");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->attributes, kEfiVariableNonVolatile);
}

// efivarfs makes non-standard variables immutable; a directory on ext4 can
// carry the same flag, which exercises the same path.
TEST_F(EfivarStoreTest, RewritesAnImmutableVariableAndKeepsTheFlag) {
  std::string file = EfivarDirectoryPath() + "RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d";
  ASSERT_TRUE(
      store_->Set(kRalphVendorGuid, "RalphSlotState", {{1, 2, 3}}, kEfiVariableDefaultAttributes));
  int flags = GetFlags(file);
  ASSERT_GE(flags, 0) << "FS_IOC_GETFLAGS failed: /tmp's file system has no inode flags";
  ASSERT_TRUE(SetImmutable(file, true));
  auto set =
      store_->Set(kRalphVendorGuid, "RalphSlotState", {{4, 5}}, kEfiVariableDefaultAttributes);
  ASSERT_TRUE(set) << set.error().ToString();
  auto got = store_->Get(kRalphVendorGuid, "RalphSlotState");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->data, (std::vector<uint8_t>{4, 5}));
  EXPECT_TRUE(GetFlags(file) & FS_IMMUTABLE_FL);
  // Deleting clears the flag too.
  ASSERT_TRUE(store_->Delete(kRalphVendorGuid, "RalphSlotState"));
  EXPECT_FALSE(std::filesystem::exists(file));
}

TEST_F(EfivarStoreTest, TornFileIsCorrupt) {
  WriteRawFile(EfivarDirectoryPath() + "BootNext-8be4df61-93ca-11d2-aa0d-00e098032b8c",
               {0x07, 0x00});
  auto got = store_->Get(kEfiGlobalGuid, "BootNext");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(got.error().message(), HasSubstr("BootNext-8be4df61"));
  EXPECT_THAT(got.error().message(), HasSubstr("fewer than its 4-byte attribute header"));
}

TEST_F(EfivarStoreTest, BadNamesAreRejected) {
  auto empty = store_->Set(kEfiGlobalGuid, "", {{1}}, kEfiVariableDefaultAttributes);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code(), ErrorCode::kInvalidArgument);
  auto slash = store_->Get(kEfiGlobalGuid, "../etc/passwd");
  ASSERT_FALSE(slash);
  EXPECT_EQ(slash.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(slash.error().message(), HasSubstr("contains '/'"));
}

TEST_F(EfivarStoreTest, ChangingEfivarfsPathAfterStartIsRefused) {
  std::string original = EfivarDirectoryPath();
  ASSERT_EQ(::setenv("EFIVARFS_PATH", "/tmp/somewhere-else/", 1), 0);
  auto store = LibefivarStore::Open();
  ASSERT_EQ(::setenv("EFIVARFS_PATH", original.c_str(), 1), 0);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(store.error().message(), HasSubstr("set it before the program starts"));
}

// Mounts over the store directory need a private mount namespace so nobody
// else on the machine sees them; the test process is single-threaded.
class PrivateMountTest : public EfivarStoreTest {
 protected:
  void SetUp() override {
    EfivarStoreTest::SetUp();
    ASSERT_EQ(::unshare(CLONE_NEWNS), 0) << "unshare(CLONE_NEWNS): " << strerror(errno);
    ASSERT_EQ(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0);
  }
  void TearDown() override {
    if (mounted_) ::umount2(EfivarDirectoryPath().c_str(), MNT_DETACH);
  }
  bool mounted_ = false;
};

TEST_F(PrivateMountTest, ReadOnlyStoreIsReadOnlyWithAClearMessage) {
  ASSERT_TRUE(store_->Set(kEfiGlobalGuid, "BootOrder", {{1, 0}}, kEfiVariableDefaultAttributes));
  std::string dir = EfivarDirectoryPath();
  ASSERT_EQ(::mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr), 0) << strerror(errno);
  mounted_ = true;
  ASSERT_EQ(::mount(nullptr, dir.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr), 0)
      << strerror(errno);

  auto set = store_->Set(kEfiGlobalGuid, "BootOrder", {{2, 0}}, kEfiVariableDefaultAttributes);
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().code(), ErrorCode::kReadOnly);
  EXPECT_THAT(set.error().message(),
              HasSubstr("writing BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"));
  EXPECT_THAT(set.error().message(), HasSubstr("is read-only"));
  auto created = store_->Set(kEfiGlobalGuid, "BootNext", {{2, 0}}, kEfiVariableDefaultAttributes);
  ASSERT_FALSE(created);
  EXPECT_EQ(created.error().code(), ErrorCode::kReadOnly);
  auto del = store_->Delete(kEfiGlobalGuid, "BootOrder");
  ASSERT_FALSE(del);
  EXPECT_EQ(del.error().code(), ErrorCode::kReadOnly);
  EXPECT_THAT(del.error().message(), HasSubstr("deleting BootOrder-8be4df61"));
  // Reading still works, and the old value is intact.
  auto got = store_->Get(kEfiGlobalGuid, "BootOrder");
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(got->data, (std::vector<uint8_t>{1, 0}));
}

TEST_F(PrivateMountTest, FullStoreIsNoSpace) {
  std::string dir = EfivarDirectoryPath();
  ASSERT_EQ(::mount("ralph-efivars-full", dir.c_str(), "tmpfs", 0, "size=8k"), 0)
      << strerror(errno);
  mounted_ = true;
  std::vector<uint8_t> big(64 * 1024, 0x5a);
  auto set = store_->Set(kRalphVendorGuid, "RalphSlotState", big, kEfiVariableDefaultAttributes);
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().code(), ErrorCode::kNoSpace);
  EXPECT_THAT(set.error().message(),
              HasSubstr("writing RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d"));
  EXPECT_THAT(set.error().message(), HasSubstr("storage is full"));
  // A failed create leaves no half variable behind.
  auto got = store_->Get(kRalphVendorGuid, "RalphSlotState");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), ErrorCode::kNotFound);
}

TEST_F(EfivarStoreTest, UseEfivarfsPathOrReexecKeepsAPathInEffect) {
  std::string dir = EfivarDirectoryPath();
  dir.pop_back();  // without the trailing slash: normalised
  char* argv[] = {const_cast<char*>("unused"), nullptr};
  auto kept = UseEfivarfsPathOrReexec(dir, argv);  // would exec if it were not in effect
  ASSERT_TRUE(kept) << kept.error().ToString();
  auto missing = UseEfivarfsPathOrReexec(dir + "/no-such-dir", argv);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(missing.error().message(), HasSubstr("no-such-dir"));
}

// A process started without the right EFIVARFS_PATH re-executes itself and
// then really uses the directory: the child writes through libefivar and the
// file appears there.
TEST_F(EfivarStoreTest, UseEfivarfsPathOrReexecReexecutes) {
  char other_template[] = "/tmp/ralph-efivars-other-XXXXXX";
  ASSERT_NE(::mkdtemp(other_template), nullptr);
  std::string other = other_template;
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("RALPH_EFIVAR_REEXEC_PROBE", "1", 1);
    char* argv[] = {const_cast<char*>("efivar_store_test"), nullptr};
    auto result = UseEfivarfsPathOrReexec(other, argv);
    fprintf(stderr, "did not re-exec: %s\n",
            result ? "returned success" : result.error().ToString().c_str());
    _exit(3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(std::filesystem::exists(other + "/RalphProbe-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d"));
  EXPECT_FALSE(std::filesystem::exists(EfivarDirectoryPath() +
                                       "RalphProbe-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d"));
  std::filesystem::remove_all(other);
}

// What the re-executed probe does: open the store and write one variable.
int ReexecProbe() {
  auto store = LibefivarStore::Open();
  if (!store) {
    fprintf(stderr, "probe: %s\n", store.error().ToString().c_str());
    return 1;
  }
  auto set = (*store)->Set(kRalphVendorGuid, "RalphProbe", std::vector<uint8_t>{1},
                           kEfiVariableDefaultAttributes);
  if (!set) {
    fprintf(stderr, "probe: %s\n", set.error().ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ralph

int main(int argc, char** argv) {
  if (std::getenv("RALPH_EFIVAR_REEXEC_PROBE")) return ralph::ReexecProbe();
  return ralph::testing::RunWithEfivarDirectory(argv, "ralph-efivars-test", [&] {
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
  });
}
