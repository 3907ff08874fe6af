// The credential store (docs/credentials.md): what an agent's own login flow
// wrote (`~/.claude/.credentials.json`, `$CODEX_HOME/auth.json`, ...), one
// file per account, encrypted at rest with AES-256-GCM under a device key
// that lives outside the store's directory, so a copy of the directory alone
// (a backup, a disk image of VAR without the key) reveals nothing.
//
//   auto store = TRY(CredentialStore::Open("/var/lib/ralph/credentials",
//                                          "/var/lib/ralph/credentials.key"));
//   AccountId account = TRY(AccountId::Make("claude", Scope::kGlobal, "default"));
//   TRY(store->Put(account, credential_file_bytes));      // atomic replace
//   std::string live = TRY(store->CheckOut(account, live_dir, ".credentials.json", job_uid));
//   ... bind `live_dir` into the jobs holding the account; they refresh the file ...
//   TRY(store->CheckIn(account, live));                   // written back, live copy gone
//
// An account's credential is one file shared by reference: the agents
// rotate their refresh tokens and each works once, so copies would log the
// account out. CheckOut decrypts it into one file on a tmpfs (never onto
// VAR), in a directory the jobs holding the account bind as the tool's own
// configuration directory (so a tool may save a refresh in place or by
// renaming a new file over it); CheckIn encrypts what they left and
// replaces the stored file atomically. Who may hold an
// account and how many at a time is the caller's (ralphd's policy).
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::creds {

// Whom an account serves: one policy profile's jobs (agent), the jobs of
// the profiles that name one tenant (tenant), or every job whose policy
// grants the appliance's own account (global).
enum class Scope { kAgent, kTenant, kGlobal };

// "agent", "tenant", "global".
std::string_view ScopeName(Scope scope);
// kInvalidArgument naming the value and the known scopes.
Result<Scope> ParseScope(std::string_view name);

// The name a global account has: there is one per agent profile.
inline constexpr std::string_view kGlobalName = "default";

// One account: an agent profile (claude, codex, opencode), a scope and a
// name ([a-z0-9._-], 1..64, as policy profile names: the policy profile for
// agent, the tenant for
// tenant, "default" for global).
struct AccountId {
  std::string profile;
  Scope scope = Scope::kGlobal;
  std::string name;

  // kInvalidArgument naming the part that is not a valid name.
  static Result<AccountId> Make(std::string_view profile, Scope scope, std::string_view name);
  // "claude/global/default".
  std::string ToString() const;
  // kInvalidArgument unless `text` is what ToString makes.
  static Result<AccountId> Parse(std::string_view text);
  // The store's file name: "claude.global.default.cred".
  std::string FileName() const;
  bool operator==(const AccountId&) const = default;
  auto operator<=>(const AccountId&) const = default;
};

struct AccountInfo {
  AccountId id;
  int64_t updated_unix = 0;  // when its credential was last written
};

// Whether `dir` is on a memory filesystem (tmpfs, ramfs): where a
// decrypted credential may live. kRefused naming the filesystem otherwise.
Result<void> RequireMemoryFilesystem(const std::string& dir);

class CredentialStore {
 public:
  // The store's directory (made 0700 root when absent; one that exists
  // must be a directory owned by root and closed to others) and the device
  // key's file, outside it (32 random bytes made 0600 on first use; one
  // that exists must be a regular file of root, 0600 or stricter, exactly
  // 32 bytes). kInvalidArgument when the key lies inside the directory,
  // kRefused naming what is wrong with either.
  static Result<std::unique_ptr<CredentialStore>> Open(std::string dir, std::string key_path);
  ~CredentialStore();
  CredentialStore(const CredentialStore&) = delete;
  CredentialStore& operator=(const CredentialStore&) = delete;

  // Encrypts `plaintext` and replaces the account's file atomically
  // (synced, with its directory). kInvalidArgument for an empty credential.
  Result<void> Put(const AccountId& account, std::string_view plaintext);
  // The decrypted credential. kNotFound for an account that has none;
  // kVerificationFailed for a file that does not decrypt under the device
  // key as this account's (tampered, truncated, renamed from another
  // account, or another key).
  Result<std::string> Get(const AccountId& account) const;
  Result<bool> Has(const AccountId& account) const;
  // Every account with a stored credential, in AccountId order. Files that
  // are not an account's (a temporary file left by a crash) are skipped.
  Result<std::vector<AccountInfo>> List() const;
  // Removes the account's file (kNotFound when there is none).
  Result<void> Revoke(const AccountId& account);

  // Decrypts the account's credential into `<live_dir>/<file_name>` (mode
  // 0600, owned by `owner`, replaced atomically), the single live copy
  // the jobs holding it bind. `live_dir` must be an existing directory on
  // a memory filesystem; `file_name` a plain name (no '/', not "." or
  // ".."), kInvalidArgument otherwise. Returns the live file's path.
  Result<std::string> CheckOut(const AccountId& account, const std::string& live_dir,
                               std::string_view file_name, uid_t owner) const;
  // Writes what the live copy holds back into the store (when it parses as
  // a non-empty file: a job that emptied it leaves the stored credential
  // as it was, kInvalidArgument) and removes the live copy. The live file
  // is opened without following a symlink a job could have left.
  Result<void> CheckIn(const AccountId& account, const std::string& live_path);
  // Writes the live copy back and keeps it (a change made while jobs
  // still hold the account).
  Result<void> WriteBack(const AccountId& account, const std::string& live_path);

  const std::string& dir() const { return dir_; }

 private:
  using Key = std::array<uint8_t, 32>;
  CredentialStore(std::string dir, const Key& key) : dir_(std::move(dir)), key_(key) {}
  std::string PathOf(const AccountId& account) const;

  std::string dir_;
  Key key_;
};

}  // namespace ralph::creds
