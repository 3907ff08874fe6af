#include "services/creds/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::creds {
namespace {

using namespace std::string_view_literals;

// The file: magic (8 bytes, the format's version in it), a random 96-bit
// nonce, the ciphertext, the 128-bit GCM tag. The additional data is the
// magic and the account's name, so a file renamed to another account (or
// to another format) does not decrypt.
constexpr std::string_view kMagic = "RCRED01\n"sv;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr std::string_view kSuffix = ".cred"sv;
// Far above any tool's credential file (a few KiB): a bound on what is read.
constexpr size_t kMaxCredentialBytes = 1 << 20;

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

bool ValidProfile(std::string_view profile) {
  // A tool profile's name: no '.', so that a file name splits unambiguously.
  return ValidName(profile) && profile.find('.') == std::string_view::npos;
}

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

std::string Aad(const AccountId& account) {
  return std::string(kMagic) + account.ToString();
}

Result<std::string> Seal(std::span<const uint8_t, 32> key, const std::string& aad,
                         std::string_view plaintext) {
  std::string out(kMagic);
  uint8_t nonce[kNonceBytes];
  if (RAND_bytes(nonce, sizeof nonce) != 1) {
    return Error::Make(ErrorCode::kInternal, "RAND_bytes failed");
  }
  out.append(reinterpret_cast<const char*>(nonce), sizeof nonce);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  size_t start = out.size();
  out.resize(start + plaintext.size() + kTagBytes);
  auto* data = reinterpret_cast<uint8_t*>(out.data());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), data + start, &len,
                        reinterpret_cast<const uint8_t*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), data + start + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          data + start + plaintext.size()) != 1) {
    return Error::Make(ErrorCode::kInternal, "AES-256-GCM encryption failed");
  }
  return out;
}

Result<std::string> Unseal(std::span<const uint8_t, 32> key, const std::string& aad,
                           std::string_view sealed) {
  if (sealed.size() < kMagic.size() + kNonceBytes + kTagBytes ||
      sealed.substr(0, kMagic.size()) != kMagic) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       "not a credential file of this format (bad header or truncated)");
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(sealed.data());
  const uint8_t* nonce = bytes + kMagic.size();
  const uint8_t* cipher = nonce + kNonceBytes;
  size_t cipher_size = sealed.size() - kMagic.size() - kNonceBytes - kTagBytes;
  uint8_t tag[kTagBytes];
  std::memcpy(tag, cipher + cipher_size, kTagBytes);
  std::string plain(cipher_size, '\0');
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  auto* out = reinterpret_cast<uint8_t*>(plain.data());
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out, &len, cipher, static_cast<int>(cipher_size)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) != 1) {
    return Error::Make(ErrorCode::kInternal, "AES-256-GCM decryption failed to start");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), out + len, &len) != 1) {
    OPENSSL_cleanse(plain.data(), plain.size());
    return Error::Make(ErrorCode::kVerificationFailed,
                       "authentication failed (tampered, another account's, or another key)");
  }
  return plain;
}

// Reads a small regular file without following a symlink; kRefused when
// it is not a regular file or larger than the bound.
Result<std::string> ReadRegularFile(const std::string& path, struct stat* st_out = nullptr) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Error::FromErrno(fmt::format("stat {}", path), errno);
  if (!S_ISREG(st.st_mode)) {
    return Error::Make(ErrorCode::kRefused, fmt::format("{}: not a regular file", path));
  }
  if (static_cast<size_t>(st.st_size) > kMaxCredentialBytes) {
    return Error::Make(ErrorCode::kRefused, fmt::format("{}: {} bytes is more than the limit of {}",
                                                        path, st.st_size, kMaxCredentialBytes));
  }
  std::string out;
  char buffer[8192];
  while (true) {
    ssize_t got = ::read(fd.get(), buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return Error::FromErrno(fmt::format("read {}", path), errno);
    if (got == 0) break;
    out.append(buffer, static_cast<size_t>(got));
    if (out.size() > kMaxCredentialBytes) {
      return Error::Make(ErrorCode::kRefused, fmt::format("{}: grew past the limit", path));
    }
  }
  if (st_out) *st_out = st;
  return out;
}

Result<void> EnsureRootDir(const std::string& dir, mode_t mode, mode_t forbidden) {
  if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", dir), errno);
  }
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return Error::FromErrno(fmt::format("stat {}", dir), errno);
  if (!S_ISDIR(st.st_mode)) {
    return Error::Make(ErrorCode::kRefused, fmt::format("{}: not a directory", dir));
  }
  if (st.st_uid != ::geteuid()) {
    return Error::Make(ErrorCode::kRefused, fmt::format("{}: owned by uid {}, not by uid {}", dir,
                                                        st.st_uid, ::geteuid()));
  }
  if ((st.st_mode & forbidden) != 0) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("{}: mode {:o} lets others in", dir, st.st_mode & 07777));
  }
  return {};
}

}  // namespace

std::string_view ScopeName(Scope scope) {
  switch (scope) {
    case Scope::kAgent: return "agent";
    case Scope::kTenant: return "tenant";
    case Scope::kGlobal: return "global";
  }
  return "global";
}

Result<Scope> ParseScope(std::string_view name) {
  for (Scope scope : {Scope::kAgent, Scope::kTenant, Scope::kGlobal}) {
    if (ScopeName(scope) == name) return scope;
  }
  return Invalid(fmt::format("unknown credential scope '{}' (known: agent, tenant, global)", name));
}

Result<AccountId> AccountId::Make(std::string_view profile, Scope scope, std::string_view name) {
  if (!ValidProfile(profile)) {
    return Invalid(fmt::format("profile: '{}' is not an agent profile's name", profile));
  }
  if (!ValidName(name)) {
    return Invalid(fmt::format("name: '{}' is not a name ([a-z0-9._-], 1..64 characters)", name));
  }
  if (scope == Scope::kGlobal && name != kGlobalName) {
    return Invalid(
        fmt::format("name: a global account is named '{}', not '{}'", kGlobalName, name));
  }
  return AccountId{std::string(profile), scope, std::string(name)};
}

std::string AccountId::ToString() const {
  return fmt::format("{}/{}/{}", profile, ScopeName(scope), name);
}

Result<AccountId> AccountId::Parse(std::string_view text) {
  size_t first = text.find('/');
  size_t second = first == std::string_view::npos ? first : text.find('/', first + 1);
  if (second == std::string_view::npos) {
    return Invalid(fmt::format("account '{}': not PROFILE/SCOPE/NAME", text));
  }
  Scope scope = TRY_CTX(ParseScope(text.substr(first + 1, second - first - 1)),
                        fmt::format("account '{}'", text));
  return TRY_CTX(Make(text.substr(0, first), scope, text.substr(second + 1)),
                 fmt::format("account '{}'", text));
}

std::string AccountId::FileName() const {
  return fmt::format("{}.{}.{}{}", profile, ScopeName(scope), name, kSuffix);
}

Result<void> RequireMemoryFilesystem(const std::string& dir) {
  struct statfs fs;
  if (::statfs(dir.c_str(), &fs) != 0)
    return Error::FromErrno(fmt::format("statfs {}", dir), errno);
  if (fs.f_type != TMPFS_MAGIC && fs.f_type != RAMFS_MAGIC) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("{}: not on a memory filesystem (tmpfs or ramfs; f_type {:#x}): "
                                   "a decrypted credential never goes to a disk",
                                   dir, static_cast<unsigned long>(fs.f_type)));
  }
  return {};
}

Result<std::unique_ptr<CredentialStore>> CredentialStore::Open(std::string dir,
                                                               std::string key_path) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty() || dir[0] != '/' || key_path.empty() || key_path[0] != '/') {
    return Invalid("credential store: the directory and the key's path must be absolute");
  }
  if (key_path.rfind(dir + "/", 0) == 0) {
    return Invalid(
        fmt::format("credential store: the device key {} must not be inside the store "
                    "{}: a copy of the store alone must reveal nothing",
                    key_path, dir));
  }
  TRY_CTX(EnsureRootDir(dir, 0700, 0077), "credential store");

  Key key{};
  struct stat st;
  Result<std::string> existing = ReadRegularFile(key_path, &st);
  if (!existing && existing.error().code() == ErrorCode::kNotFound) {
    if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
      return Error::Make(ErrorCode::kInternal, "RAND_bytes failed");
    }
    TRY_CTX(WriteFileAtomically(
                key_path, std::string_view(reinterpret_cast<const char*>(key.data()), key.size()),
                0600, Durability::kFileAndDirectorySynced),
            "creating the credential store's device key");
  } else {
    if (!existing) return existing.error().WithContext("credential store's device key");
    if (st.st_uid != ::geteuid() || (st.st_mode & 0177) != 0) {
      OPENSSL_cleanse(existing->data(), existing->size());
      return Error::Make(ErrorCode::kRefused,
                         fmt::format("credential store's device key {}: owned by uid {} with mode "
                                     "{:o}; it must be uid {}'s and 0600",
                                     key_path, st.st_uid, st.st_mode & 07777, ::geteuid()));
    }
    if (existing->size() != key.size()) {
      OPENSSL_cleanse(existing->data(), existing->size());
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("credential store's device key {}: {} bytes, not {}", key_path,
                                     existing->size(), key.size()));
    }
    std::memcpy(key.data(), existing->data(), key.size());
    OPENSSL_cleanse(existing->data(), existing->size());
  }
  std::unique_ptr<CredentialStore> store(new CredentialStore(std::move(dir), key));
  OPENSSL_cleanse(key.data(), key.size());
  return store;
}

CredentialStore::~CredentialStore() {
  OPENSSL_cleanse(key_.data(), key_.size());
}

std::string CredentialStore::PathOf(const AccountId& account) const {
  return dir_ + "/" + account.FileName();
}

Result<void> CredentialStore::Put(const AccountId& account, std::string_view plaintext) {
  if (plaintext.empty()) {
    return Invalid(fmt::format("account {}: an empty credential", account.ToString()));
  }
  if (plaintext.size() > kMaxCredentialBytes) {
    return Invalid(fmt::format("account {}: a credential of {} bytes is more than the limit of {}",
                               account.ToString(), plaintext.size(), kMaxCredentialBytes));
  }
  std::string sealed = TRY(Seal(key_, Aad(account), plaintext));
  TRY_CTX(WriteFileAtomically(PathOf(account), sealed, 0600, Durability::kFileAndDirectorySynced),
          fmt::format("storing account {}", account.ToString()));
  return {};
}

Result<std::string> CredentialStore::Get(const AccountId& account) const {
  Result<std::string> sealed = ReadRegularFile(PathOf(account));
  if (!sealed && sealed.error().code() == ErrorCode::kNotFound) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("account {} has no credential (log in with `ralphctl creds "
                                   "login {} --scope {}`)",
                                   account.ToString(), account.profile, ScopeName(account.scope)));
  }
  if (!sealed) return sealed.error().WithContext(fmt::format("account {}", account.ToString()));
  return TRY_CTX(Unseal(key_, Aad(account), *sealed),
                 fmt::format("account {}: {}", account.ToString(), PathOf(account)));
}

Result<bool> CredentialStore::Has(const AccountId& account) const {
  struct stat st;
  if (::lstat(PathOf(account).c_str(), &st) == 0) return S_ISREG(st.st_mode);
  if (errno == ENOENT) return false;
  return Error::FromErrno(fmt::format("stat {}", PathOf(account)), errno);
}

Result<std::vector<AccountInfo>> CredentialStore::List() const {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(dir_.c_str()), ::closedir);
  if (!dir) return Error::FromErrno(fmt::format("opendir {}", dir_), errno);
  std::vector<AccountInfo> out;
  while (dirent* entry = ::readdir(dir.get())) {
    std::string_view name = entry->d_name;
    if (name.size() <= kSuffix.size() || name.substr(name.size() - kSuffix.size()) != kSuffix) {
      continue;
    }
    name.remove_suffix(kSuffix.size());
    size_t first = name.find('.');
    size_t second = first == std::string_view::npos ? first : name.find('.', first + 1);
    if (second == std::string_view::npos) continue;
    Result<Scope> scope = ParseScope(name.substr(first + 1, second - first - 1));
    if (!scope) continue;
    Result<AccountId> id = AccountId::Make(name.substr(0, first), *scope, name.substr(second + 1));
    if (!id) continue;
    struct stat st;
    if (::lstat(PathOf(*id).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.push_back({std::move(*id), static_cast<int64_t>(st.st_mtim.tv_sec)});
  }
  std::sort(out.begin(), out.end(),
            [](const AccountInfo& a, const AccountInfo& b) { return a.id < b.id; });
  return out;
}

Result<void> CredentialStore::Revoke(const AccountId& account) {
  if (::unlink(PathOf(account).c_str()) != 0) {
    if (errno == ENOENT) {
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("account {} has no credential", account.ToString()));
    }
    return Error::FromErrno(fmt::format("unlink {}", PathOf(account)), errno);
  }
  UniqueFd dir(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  return {};
}

Result<std::string> CredentialStore::CheckOut(const AccountId& account, const std::string& live_dir,
                                              std::string_view file_name, uid_t owner) const {
  if (file_name.empty() || file_name == "." || file_name == ".." ||
      file_name.find('/') != std::string_view::npos) {
    return Invalid(fmt::format("live credential file name '{}' is not a plain name", file_name));
  }
  struct stat st;
  if (::lstat(live_dir.c_str(), &st) != 0) {
    return Error::FromErrno(fmt::format("live credentials: stat {}", live_dir), errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("live credentials: {} is not a directory", live_dir));
  }
  TRY_CTX(RequireMemoryFilesystem(live_dir), "live credentials");
  std::string plain = TRY(Get(account));
  std::string path = live_dir + "/" + std::string(file_name);
  Result<AtomicFile> file = AtomicFile::Create(path, 0600);
  if (!file) {
    OPENSSL_cleanse(plain.data(), plain.size());
    return file.error();
  }
  Result<void> written = WriteAll(file->fd(), plain, file->temp_path());
  OPENSSL_cleanse(plain.data(), plain.size());
  if (!written) return written.error();
  if (::fchown(file->fd(), owner, owner) != 0) {
    return Error::FromErrno(fmt::format("chown {}", file->temp_path()), errno);
  }
  TRY(file->Commit(Durability::kNone));
  return path;
}

Result<void> CredentialStore::WriteBack(const AccountId& account, const std::string& live_path) {
  std::string plain = TRY_CTX(ReadRegularFile(live_path),
                              fmt::format("account {}: reading the live copy", account.ToString()));
  if (plain.empty()) {
    return Invalid(
        fmt::format("account {}: the live copy {} is empty; the stored credential is "
                    "kept",
                    account.ToString(), live_path));
  }
  Result<void> stored = Put(account, plain);
  OPENSSL_cleanse(plain.data(), plain.size());
  return stored;
}

Result<void> CredentialStore::CheckIn(const AccountId& account, const std::string& live_path) {
  Result<void> written = WriteBack(account, live_path);
  // The live copy goes whatever happened: a credential a job broke stays
  // as it was stored, and no plaintext outlives its holders.
  if (::unlink(live_path.c_str()) != 0 && errno != ENOENT && written) {
    return Error::FromErrno(fmt::format("unlink {}", live_path), errno);
  }
  return written;
}

}  // namespace ralph::creds
