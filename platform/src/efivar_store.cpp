#include "platform/efivar_store.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "efivar_handles.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph {
namespace {

// linux/magic.h EFIVARFS_MAGIC.
constexpr decltype(statfs::f_type) kEfivarfsMagic = 0xde5e81e4;
constexpr size_t kAttributeHeaderSize = sizeof(uint32_t);
// libefivar 37 refuses longer names with EINVAL (efivarfs.c).
constexpr size_t kMaxNameLength = 1024;

Result<void> CheckName(std::string_view name) {
  if (name.empty()) return Error::Make(ErrorCode::kInvalidArgument, "empty EFI variable name");
  if (name.size() > kMaxNameLength) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("EFI variable name of {} characters is longer than {}",
                                   name.size(), kMaxNameLength));
  }
  if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("EFI variable name \"{}\" contains '/' or NUL", name));
  }
  return {};
}

// The value of `key` in the environment the process was started with.
// libefivar read its EFIVARFS_PATH from that environment in its constructor.
// nullopt if unset; an error if /proc is unavailable.
Result<std::optional<std::string>> InitialEnvironmentValue(std::string_view key) {
  std::string all = TRY(ReadWholeFile("/proc/self/environ"));
  std::string prefix = fmt::format("{}=", key);
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    std::string_view entry(all.data() + start, end - start);
    if (entry.starts_with(prefix)) return std::string(entry.substr(prefix.size()));
    start = end + 1;
  }
  return std::optional<std::string>();
}

// efivarfs marks every variable that is not a well-known UEFI one immutable
// (fs/efivarfs/inode.c efivarfs_create: `if (!is_removable) S_IMMUTABLE`,
// and FS_IMMUTABLE_FL via chattr), so opening an existing RalphSlotState for
// writing fails with EPERM. libefivar 37 reads the flags but then calls
// FS_IOC_SETFLAGS on fd -1 (see `strace` of efi_set_variable), so the flag is
// never cleared; systemd's efi_set_variable clears it the same way we do
// (src/basic/efivars.c, chattr_fd(fd, 0, FS_IMMUTABLE_FL)).
//
// Clears FS_IMMUTABLE_FL on `path` if it exists and has it. Returns whether
// the flag was set (so it can be restored). A file system without inode flags
// (ENOTTY/EOPNOTSUPP, e.g. tmpfs) has no immutable files: false.
Result<bool> ClearImmutable(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    return Error::FromErrno(fmt::format("open {}", path), errno);
  }
  UniqueFd file(fd);
  int flags = 0;
  if (::ioctl(file.get(), FS_IOC_GETFLAGS, &flags) < 0) {
    if (errno == ENOTTY || errno == EOPNOTSUPP || errno == EINVAL) return false;
    return Error::FromErrno(fmt::format("FS_IOC_GETFLAGS {}", path), errno);
  }
  if (!(flags & FS_IMMUTABLE_FL)) return false;
  flags &= ~FS_IMMUTABLE_FL;
  if (::ioctl(file.get(), FS_IOC_SETFLAGS, &flags) < 0) {
    return Error::FromErrno(ErrorCode::kReadOnly,
                            fmt::format("clearing the immutable flag of {}", path), errno);
  }
  return true;
}

// Best effort: the variable was written; losing the protection flag is not
// worth failing the write for.
void RestoreImmutable(const std::string& path) {
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!file) return;
  int flags = 0;
  if (::ioctl(file.get(), FS_IOC_GETFLAGS, &flags) < 0) return;
  flags |= FS_IMMUTABLE_FL;
  (void)::ioctl(file.get(), FS_IOC_SETFLAGS, &flags);
}

// The error for a failed write (Set/Delete) of `id`.
Error WriteError(std::string_view verb, const std::string& id, const std::string& store, int err) {
  std::string what = fmt::format("{} {}", verb, id);
  if (err == EROFS) {
    return Error::FromErrno(
        ErrorCode::kReadOnly,
        fmt::format("{}: the variable store {} is read-only (mounted ro?)", what, store), err);
  }
  if (err == EACCES) {
    return Error::FromErrno(
        ErrorCode::kReadOnly,
        fmt::format("{}: the variable store {} is not writable by this process", what, store), err);
  }
  if (err == ENOSPC) {
    return Error::FromErrno(ErrorCode::kNoSpace,
                            fmt::format("{}: the variable storage is full", what), err);
  }
  return Error::FromErrno(what, err);
}

}  // namespace

std::string EfiVariableId(const EfiGuid& guid, std::string_view name) {
  return fmt::format("{}-{}", name, guid.ToString());
}

Result<std::unique_ptr<LibefivarStore>> LibefivarStore::Open() {
  const char* env = std::getenv("EFIVARFS_PATH");
  // /proc may be missing very early in boot; then the check cannot be made,
  // and there is nobody who could have changed the environment yet either.
  auto initial = InitialEnvironmentValue("EFIVARFS_PATH");
  if (initial) {
    std::optional<std::string> now = env ? std::optional<std::string>(env) : std::nullopt;
    if (*initial != now) {
      return Error::Make(
          ErrorCode::kInvalidState,
          fmt::format(
              "EFIVARFS_PATH is \"{}\" but the process started with \"{}\"; libefivar reads "
              "it once when it is loaded, so set it before the program starts",
              now.value_or("(unset)"), initial->value_or("(unset)")));
    }
  }

  std::string path = env ? std::string(env) : std::string(kEfivarfsPath);
  if (env && (path.empty() || path.back() != '/')) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("EFIVARFS_PATH=\"{}\" must end with '/' (libefivar appends the "
                                   "variable file name to it as is)",
                                   path));
  }
  struct stat st;
  if (::stat(path.c_str(), &st) < 0) {
    int err = errno;
    if (!env && err == ENOENT) {
      return Error::Make(ErrorCode::kUnsupported,
                         fmt::format("no EFI variable store: {} does not exist (not booted with "
                                     "UEFI, or efivarfs not mounted) and EFIVARFS_PATH is unset",
                                     path));
    }
    return Error::FromErrno(fmt::format("EFI variable store {}", path), err);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("EFI variable store {} is not a directory", path));
  }
  if (!efi_variables_supported()) {
    efivar::ClearErrorStack();
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("libefivar found no usable variable store at {}", path));
  }
  struct statfs fs;
  if (::statfs(path.c_str(), &fs) < 0) {
    return Error::FromErrno(fmt::format("statfs {}", path), errno);
  }
  bool is_efivarfs = fs.f_type == kEfivarfsMagic;
  return std::unique_ptr<LibefivarStore>(new LibefivarStore(std::move(path), is_efivarfs));
}

Result<void> UseEfivarfsPathOrReexec(const std::string& dir, char* const argv[]) {
  if (dir.empty()) return Error::Make(ErrorCode::kInvalidArgument, "empty EFI variable directory");
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(dir, error);
  if (error) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("EFI variable directory {}: {}", dir, error.message()));
  }
  struct stat st;
  if (::stat(absolute.c_str(), &st) < 0) {
    return Error::FromErrno(fmt::format("EFI variable directory {}", dir), errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("EFI variable directory {} is not a directory", dir));
  }
  std::string wanted = absolute.lexically_normal().string();
  if (wanted.back() != '/') wanted += '/';
  std::optional<std::string> initial = TRY(InitialEnvironmentValue("EFIVARFS_PATH"));
  if (initial && *initial == wanted) {
    const char* now = std::getenv("EFIVARFS_PATH");
    if (!now || wanted != now) ::setenv("EFIVARFS_PATH", wanted.c_str(), 1);
    return {};
  }
  if (::setenv("EFIVARFS_PATH", wanted.c_str(), 1) < 0) {
    return Error::FromErrno("setenv EFIVARFS_PATH", errno);
  }
  ::execv("/proc/self/exe", argv);
  return Error::FromErrno("re-executing /proc/self/exe with EFIVARFS_PATH set", errno);
}

std::string LibefivarStore::FilePath(const EfiGuid& guid, std::string_view name) const {
  return path_ + EfiVariableId(guid, name);
}

Result<EfiVariable> LibefivarStore::Get(const EfiGuid& guid, std::string_view name) {
  TRY(CheckName(name));
  std::string id = EfiVariableId(guid, name);
  std::string file = FilePath(guid, name);
  // libefivar reads the 4-byte header with one read() and does not check
  // that it got 4 bytes; a shorter file (a torn write in a directory store)
  // would come back with garbage attributes.
  struct stat st;
  if (::stat(file.c_str(), &st) < 0) {
    int err = errno;
    if (err == ENOENT) {
      return Error::FromErrno(ErrorCode::kNotFound, fmt::format("reading {}", id), err);
    }
    return Error::FromErrno(fmt::format("reading {}", id), err);
  }
  // (efivarfs itself never shows a file shorter than the header.)
  if (!is_efivarfs_ && st.st_size < static_cast<off_t>(kAttributeHeaderSize)) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("reading {}: the variable file has {} bytes, fewer than its "
                                   "4-byte attribute header",
                                   id, st.st_size));
  }

  std::string c_name(name);
  uint8_t* data = nullptr;
  size_t size = 0;
  uint32_t attributes = 0;
  int rc;
  do {
    errno = 0;
    rc = efi_get_variable(efivar::ToEfivar(guid), c_name.c_str(), &data, &size, &attributes);
  } while (rc < 0 && errno == EINTR);
  efivar::MallocPtr<uint8_t> owned(data);
  if (rc < 0) {
    int err = errno ? errno : EIO;
    efivar::ClearErrorStack();
    return Error::FromErrno(fmt::format("reading {}", id), err);
  }
  EfiVariable variable;
  variable.attributes = attributes;
  if (size > 0) variable.data.assign(data, data + size);
  return variable;
}

Result<void> LibefivarStore::Set(const EfiGuid& guid, std::string_view name,
                                 std::span<const uint8_t> data, uint32_t attributes) {
  TRY(CheckName(name));
  std::string id = EfiVariableId(guid, name);
  std::string file = FilePath(guid, name);
  bool was_immutable = TRY_CTX(ClearImmutable(file), fmt::format("writing {}", id));

  std::string c_name(name);
  // efi_set_variable takes a non-const, non-null buffer; it only reads it.
  uint8_t empty = 0;
  uint8_t* buffer = data.empty() ? &empty : const_cast<uint8_t*>(data.data());
  int rc;
  do {
    errno = 0;
    rc = efi_set_variable(efivar::ToEfivar(guid), c_name.c_str(), buffer, data.size(), attributes,
                          0644);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno ? errno : EIO;
    efivar::ClearErrorStack();
    if (was_immutable) RestoreImmutable(file);
    return WriteError("writing", id, path_, err);
  }

  if (!is_efivarfs_) {
    size_t expected = kAttributeHeaderSize + data.size();
    struct stat st;
    if (::stat(file.c_str(), &st) < 0) return WriteError("writing", id, path_, errno);
    if (static_cast<size_t>(st.st_size) < expected) {
      // libefivar checks only write() >= 0, so a short write (the directory's
      // file system is full) passes as success. The file now holds a prefix of
      // the new value (and maybe an old tail): remove it, as libefivar does
      // after a failed write, rather than leave a torn variable.
      (void)::unlink(file.c_str());
      return Error::FromErrno(
          ErrorCode::kNoSpace,
          fmt::format("writing {}: only {} of {} bytes were written: the variable storage is full",
                      id, st.st_size, expected),
          ENOSPC);
    }
    // libefivar 37 rewrites an existing variable with open(O_WRONLY) and one
    // write(), without O_TRUNC: right on efivarfs, where a write replaces the
    // whole variable, but on a plain file a shorter value would keep the old
    // tail. Cut the file to header + data.
    if (static_cast<size_t>(st.st_size) > expected) {
      int trunc_rc;
      do {
        trunc_rc = ::truncate(file.c_str(), static_cast<off_t>(expected));
      } while (trunc_rc < 0 && errno == EINTR);
      if (trunc_rc < 0) return WriteError("writing", id, path_, errno);
    }
  }
  if (was_immutable) RestoreImmutable(file);
  return {};
}

Result<void> LibefivarStore::Delete(const EfiGuid& guid, std::string_view name) {
  TRY(CheckName(name));
  std::string id = EfiVariableId(guid, name);
  std::string c_name(name);
  // libefivar's efivarfs_del_variable clears FS_IMMUTABLE_FL itself before
  // unlink() (unlike its set path).
  int rc;
  do {
    errno = 0;
    rc = efi_del_variable(efivar::ToEfivar(guid), c_name.c_str());
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno ? errno : EIO;
    efivar::ClearErrorStack();
    if (err == ENOENT) return {};
    return WriteError("deleting", id, path_, err);
  }
  return {};
}

Result<std::vector<std::string>> LibefivarStore::List(const EfiGuid& guid) {
  std::vector<std::string> names;
  efi_guid_t want = efivar::ToEfivar(guid);
  // efi_get_next_variable_name keeps an open directory in a static until it
  // returns 0 (end) or -1; always run it to one of those.
  while (true) {
    efi_guid_t* next_guid = nullptr;
    char* next_name = nullptr;  // both owned by libefivar
    errno = 0;
    int rc = efi_get_next_variable_name(&next_guid, &next_name);
    if (rc == 0) break;
    if (rc < 0) {
      int err = errno ? errno : EIO;
      efivar::ClearErrorStack();
      return Error::FromErrno(fmt::format("listing the variables in {}", path_), err);
    }
    if (next_guid && next_name && std::memcmp(next_guid, &want, sizeof(want)) == 0) {
      names.emplace_back(next_name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace ralph
