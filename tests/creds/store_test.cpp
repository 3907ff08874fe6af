// The credential store (services/creds/store.h) on temp directories; the
// live copies on /dev/shm (a tmpfs), each under a name holding the pid.
#include "services/creds/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "platform/file_io.h"
#include "tests/support/temp_dir.h"

namespace ralph::creds {
namespace {

constexpr std::string_view kSecret =
    R"({"claudeAiOauth":{"accessToken":"sk-ant-oat01-ACCESS-7f3a","refreshToken":"sk-ant-ort01-REFRESH-91bc"}})";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class CredsStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(temp_.path().empty());
    dir_ = temp_ / "credentials";
    key_ = temp_ / "credentials.key";
  }

  std::unique_ptr<CredentialStore> Open() {
    auto store = CredentialStore::Open(dir_, key_);
    EXPECT_TRUE(store) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }

  static AccountId Account(std::string_view profile, Scope scope, std::string_view name) {
    return *AccountId::Make(profile, scope, name);
  }

  // Every byte of every file below `dir`.
  static std::string EverythingIn(const std::string& dir) {
    std::string all;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
      if (entry.is_regular_file()) all += ReadAll(entry.path().string());
    }
    return all;
  }

  ralph::testing::TempDir temp_{"creds-store"};
  std::string dir_, key_;
};

TEST_F(CredsStoreTest, ACredentialIsStoredEncryptedAndReadBack) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  AccountId account = Account("claude", Scope::kGlobal, "default");
  ASSERT_TRUE(store->Put(account, kSecret));
  auto back = store->Get(account);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, kSecret);

  // Nothing of the plaintext, not even its tokens alone, is in the store.
  std::string stored = EverythingIn(dir_);
  EXPECT_FALSE(stored.empty());
  EXPECT_EQ(stored.find("sk-ant"), std::string::npos);
  EXPECT_EQ(stored.find("REFRESH"), std::string::npos);
  EXPECT_EQ(stored.find("claudeAiOauth"), std::string::npos);

  // Modes: the directory and the file are root's alone; the key is outside.
  struct stat st;
  ASSERT_EQ(::stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat((dir_ + "/" + account.FileName()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(::stat(key_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, 32);

  // A second write of the same credential is another ciphertext (a fresh
  // nonce), and a reopened store reads it with the same key.
  std::string first = ReadAll(dir_ + "/" + account.FileName());
  ASSERT_TRUE(store->Put(account, kSecret));
  EXPECT_NE(ReadAll(dir_ + "/" + account.FileName()), first);
  store.reset();
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(*store->Get(account), kSecret);
  // No temporary file is left by the atomic writes.
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1u);
}

TEST_F(CredsStoreTest, TamperedTruncatedRenamedAndForeignFilesAreRefused) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  AccountId account = Account("codex", Scope::kTenant, "acme");
  AccountId other = Account("codex", Scope::kTenant, "globex");
  ASSERT_TRUE(store->Put(account, kSecret));
  std::string path = dir_ + "/" + account.FileName();
  const std::string good = ReadAll(path);

  // A flipped bit anywhere: magic, nonce, ciphertext, tag.
  for (size_t offset : {size_t{0}, size_t{9}, size_t{30}, good.size() - 1}) {
    std::string bad = good;
    bad[offset] = static_cast<char>(bad[offset] ^ 0x01);
    ASSERT_TRUE(WriteWholeFile(path, bad, 0600));
    auto read = store->Get(account);
    ASSERT_FALSE(read) << "offset " << offset;
    EXPECT_EQ(read.error().code(), ErrorCode::kVerificationFailed) << read.error().ToString();
    EXPECT_NE(read.error().message().find("codex/tenant/acme"), std::string::npos);
  }
  // Truncated.
  ASSERT_TRUE(WriteWholeFile(path, good.substr(0, 20), 0600));
  EXPECT_EQ(store->Get(account).error().code(), ErrorCode::kVerificationFailed);
  ASSERT_TRUE(WriteWholeFile(path, good.substr(0, good.size() - 1), 0600));
  EXPECT_EQ(store->Get(account).error().code(), ErrorCode::kVerificationFailed);
  // One account's file put in another's place.
  ASSERT_TRUE(WriteWholeFile(path, good, 0600));
  ASSERT_TRUE(WriteWholeFile(dir_ + "/" + other.FileName(), good, 0600));
  EXPECT_EQ(store->Get(other).error().code(), ErrorCode::kVerificationFailed);
  EXPECT_TRUE(store->Get(account));
  // Another device key.
  store.reset();
  ASSERT_EQ(::unlink(key_.c_str()), 0);
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Get(account).error().code(), ErrorCode::kVerificationFailed);
}

TEST_F(CredsStoreTest, TheKeyAndTheDirectoryAreCheckedBeforeUse) {
  // The key inside the store.
  auto inside = CredentialStore::Open(dir_, dir_ + "/key");
  ASSERT_FALSE(inside);
  EXPECT_EQ(inside.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(inside.error().message().find("must not be inside"), std::string::npos);

  ASSERT_NE(Open(), nullptr);
  // A key readable by others.
  ASSERT_EQ(::chmod(key_.c_str(), 0644), 0);
  auto open = CredentialStore::Open(dir_, key_);
  ASSERT_FALSE(open);
  EXPECT_EQ(open.error().code(), ErrorCode::kRefused);
  EXPECT_NE(open.error().message().find("mode 644"), std::string::npos) << open.error().ToString();
  // A key of the wrong size.
  ASSERT_TRUE(WriteWholeFile(key_, "short", 0600));
  auto short_key = CredentialStore::Open(dir_, key_);
  ASSERT_FALSE(short_key);
  EXPECT_EQ(short_key.error().code(), ErrorCode::kCorrupt);
  // A key that is a symlink.
  ASSERT_EQ(::unlink(key_.c_str()), 0);
  ASSERT_EQ(::symlink("/etc/hostname", key_.c_str()), 0);
  EXPECT_FALSE(CredentialStore::Open(dir_, key_));
  ASSERT_EQ(::unlink(key_.c_str()), 0);
  // A store directory others may enter.
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  auto open_dir = CredentialStore::Open(dir_, key_);
  ASSERT_FALSE(open_dir);
  EXPECT_EQ(open_dir.error().code(), ErrorCode::kRefused);
  EXPECT_NE(open_dir.error().message().find("lets others in"), std::string::npos);
}

TEST_F(CredsStoreTest, AccountsAreListedAndRevoked) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  AccountId a = Account("claude", Scope::kAgent, "nightly");
  AccountId b = Account("claude", Scope::kGlobal, "default");
  AccountId c = Account("opencode", Scope::kTenant, "acme.dev");
  for (const AccountId& id : {c, a, b}) ASSERT_TRUE(store->Put(id, kSecret));
  // Not an account's: skipped.
  ASSERT_TRUE(WriteWholeFile(dir_ + "/claude.global.default.cred.123-0.tmp", "x", 0600));
  ASSERT_TRUE(WriteWholeFile(dir_ + "/junk.cred", "x", 0600));
  auto list = store->List();
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].id, a);
  EXPECT_EQ((*list)[1].id, b);
  EXPECT_EQ((*list)[2].id, c);
  EXPECT_GT((*list)[0].updated_unix, 0);

  ASSERT_TRUE(store->Revoke(b));
  EXPECT_FALSE(*store->Has(b));
  auto gone = store->Get(b);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(gone.error().message().find("ralphctl creds login claude --scope global"),
            std::string::npos);
  EXPECT_EQ(store->Revoke(b).error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(store->List()->size(), 2u);
}

TEST_F(CredsStoreTest, AccountNamesAreChecked) {
  EXPECT_TRUE(AccountId::Make("claude", Scope::kAgent, "nightly-1.x"));
  EXPECT_FALSE(AccountId::Make("claude", Scope::kAgent, "../etc"));
  EXPECT_FALSE(AccountId::Make("claude", Scope::kAgent, ""));
  EXPECT_FALSE(AccountId::Make("claude", Scope::kAgent, "Upper"));
  EXPECT_FALSE(AccountId::Make("cla.ude", Scope::kAgent, "x"));
  auto global = AccountId::Make("claude", Scope::kGlobal, "other");
  ASSERT_FALSE(global);
  EXPECT_NE(global.error().message().find("'default'"), std::string::npos);
  auto parsed = AccountId::Parse("codex/tenant/acme");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->ToString(), "codex/tenant/acme");
  EXPECT_FALSE(AccountId::Parse("codex/everyone/acme"));
  EXPECT_FALSE(AccountId::Parse("codex"));
  EXPECT_EQ(ParseScope("team").error().message(),
            "unknown credential scope 'team' (known: agent, tenant, global)");
}

TEST_F(CredsStoreTest, TheLiveCopyIsOnAMemoryFilesystemAndIsWrittenBack) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  AccountId account = Account("claude", Scope::kGlobal, "default");
  ASSERT_TRUE(store->Put(account, kSecret));

  // Never onto a disk.
  std::filesystem::create_directory(temp_ / "live");
  auto on_disk = store->CheckOut(account, temp_ / "live", ".credentials.json", 0);
  ASSERT_FALSE(on_disk);
  EXPECT_EQ(on_disk.error().code(), ErrorCode::kRefused);
  EXPECT_NE(on_disk.error().message().find("memory filesystem"), std::string::npos);

  ASSERT_EQ(RequireMemoryFilesystem("/dev/shm").has_value(), true) << "/dev/shm is not a tmpfs";
  std::string live_dir = fmt::format("/dev/shm/creds-store-test-{}", ::getpid());
  struct Cleanup {
    std::string dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{live_dir};
  ASSERT_EQ(::mkdir(live_dir.c_str(), 0700), 0);
  const uid_t owner = 100000;
  for (std::string_view bad : {"", ".", "..", "a/b"}) {
    auto refused = store->CheckOut(account, live_dir, bad, owner);
    ASSERT_FALSE(refused) << bad;
    EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument) << bad;
  }
  auto not_dir = store->CheckOut(account, "/dev/null", ".credentials.json", owner);
  ASSERT_FALSE(not_dir);
  EXPECT_EQ(not_dir.error().code(), ErrorCode::kRefused);
  auto live = store->CheckOut(account, live_dir, ".credentials.json", owner);
  ASSERT_TRUE(live) << live.error().ToString();
  EXPECT_EQ(ReadAll(*live), kSecret);
  struct stat st;
  ASSERT_EQ(::stat(live->c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, owner);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(*live, live_dir + "/.credentials.json");

  // A holder rotates the refresh token in place (as the tools do); the
  // write-back keeps the live copy, the check-in removes it.
  std::string rotated = R"({"claudeAiOauth":{"refreshToken":"sk-ant-ort01-ROTATED-2"}})";
  ASSERT_TRUE(WriteWholeFile(*live, rotated, 0600));
  ASSERT_TRUE(store->WriteBack(account, *live));
  EXPECT_EQ(*store->Get(account), rotated);
  EXPECT_TRUE(std::filesystem::exists(*live));
  std::string again = R"({"claudeAiOauth":{"refreshToken":"sk-ant-ort01-ROTATED-3"}})";
  ASSERT_TRUE(WriteWholeFile(*live, again, 0600));
  ASSERT_TRUE(store->CheckIn(account, *live));
  EXPECT_EQ(*store->Get(account), again);
  EXPECT_FALSE(std::filesystem::exists(*live));
  EXPECT_EQ(EverythingIn(dir_).find("ROTATED"), std::string::npos);

  // A holder that emptied it or put a symlink there: the stored credential
  // stays, the live copy goes.
  live = store->CheckOut(account, live_dir, ".credentials.json", owner);
  ASSERT_TRUE(live);
  ASSERT_TRUE(WriteWholeFile(*live, "", 0600));
  auto emptied = store->CheckIn(account, *live);
  ASSERT_FALSE(emptied);
  EXPECT_EQ(emptied.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(*store->Get(account), again);
  EXPECT_FALSE(std::filesystem::exists(*live));
  live = store->CheckOut(account, live_dir, ".credentials.json", owner);
  ASSERT_TRUE(live);
  ASSERT_EQ(::unlink(live->c_str()), 0);
  ASSERT_EQ(::symlink("/etc/hostname", live->c_str()), 0);
  EXPECT_FALSE(store->CheckIn(account, *live));
  EXPECT_EQ(*store->Get(account), again);
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(*live)));
}

}  // namespace
}  // namespace ralph::creds
