// LibefivarStore: EfiVarStoreInterface over libefivar (efi_get_variable,
// efi_set_variable, efi_del_variable, efi_get_next_variable_name).
//
// Which store it talks to is decided by libefivar, not by us:
//   - normally the kernel's efivarfs at /sys/firmware/efi/efivars/;
//   - with EFIVARFS_PATH=/some/dir/ (trailing slash required: libefivar
//     builds "<EFIVARFS_PATH><Name>-<guid>" by plain concatenation) a plain
//     directory holding one file per variable, each "4-byte little-endian
//     attributes + data" exactly like efivarfs. Dev machines and tests use it.
//
// EFIVARFS_PATH MUST BE IN THE ENVIRONMENT WHEN THE PROCESS STARTS. libefivar
// 37 chooses its backend in an ELF constructor (lib.c libefivar_init), which
// runs when libefivar.so is loaded, before main(); the path is read there and
// cached in a static (efivarfs.c get_efivarfs_path). A setenv() in main() is
// silently ignored by libefivar. Open() detects that case (the current value
// differs from the one the process was started with, /proc/self/environ) and
// fails with kInvalidState instead of writing to the wrong store. Tests that
// need a directory store re-exec themselves with the variable set.
//
// Quirks of libefivar 37 this class corrects (see efivar_store.cpp):
//   - efi_set_variable() does not clear FS_IMMUTABLE_FL on an existing
//     variable (it restores flags on fd -1), and efivarfs makes every
//     non-standard variable immutable, so replacing RalphSlotState would fail
//     with EPERM. Set() clears the flag first (and restores it afterwards).
//   - on a directory store, replacing a variable with shorter data leaves the
//     old tail (it opens O_WRONLY without O_TRUNC, which is right on efivarfs
//     where one write() replaces the variable). Set() truncates the file.
//   - on a directory store, a short write (the file system is full) counts as
//     success in libefivar; Set() detects it, removes the torn file and
//     returns kNoSpace.
//   - a variable file shorter than its 4-byte attribute header (a torn write
//     in a directory store) is read by libefivar as garbage; Get() returns
//     kCorrupt.
// All calls are retried on EINTR. errno is mapped precisely: ENOENT ->
// kNotFound, ENOSPC -> kNoSpace, EROFS (a read-only mount, e.g. efivarfs
// mounted ro) -> kReadOnly, EACCES/EPERM -> kPermissionDenied, else kIo. Every
// message names the variable: "writing BootOrder-8be4df61-...: No space left
// on device".
//
// Not atomic on a directory store (a crash mid-write can leave a short file;
// Get() then reports kCorrupt); on efivarfs one write() is one SetVariable().
// libefivar keeps process-global state (the backend, the directory iterator of
// efi_get_next_variable_name, the description buffer of efi_loadopt_desc), so
// one LibefivarStore per process, used from one thread at a time.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "platform/efi_vars.h"
#include "platform/result.h"

namespace ralph {

class LibefivarStore final : public EfiVarStoreInterface {
 public:
  // The default efivarfs mount point.
  static constexpr std::string_view kEfivarfsPath = "/sys/firmware/efi/efivars/";

  // Opens the store libefivar selected. Errors:
  //   kUnsupported   no efivarfs at /sys/firmware/efi/efivars/ and no
  //                  EFIVARFS_PATH (not booted with UEFI, or efivarfs not
  //                  mounted);
  //   kInvalidArgument EFIVARFS_PATH does not end in '/';
  //   kNotFound      EFIVARFS_PATH names a directory that does not exist;
  //   kInvalidState  EFIVARFS_PATH was changed after the process started.
  static Result<std::unique_ptr<LibefivarStore>> Open();

  // The directory variables live in ("/sys/firmware/efi/efivars/" or
  // EFIVARFS_PATH), always with a trailing slash.
  const std::string& path() const { return path_; }
  // True when path() is a real efivarfs mount (statfs magic).
  bool is_efivarfs() const { return is_efivarfs_; }

  Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) override;
  Result<void> Set(const EfiGuid& guid, std::string_view name, std::span<const uint8_t> data,
                   uint32_t attributes) override;
  Result<void> Delete(const EfiGuid& guid, std::string_view name) override;
  Result<std::vector<std::string>> List(const EfiGuid& guid) override;

 private:
  LibefivarStore(std::string path, bool is_efivarfs)
      : path_(std::move(path)), is_efivarfs_(is_efivarfs) {}

  // "<path>/<name>-<guid>"
  std::string FilePath(const EfiGuid& guid, std::string_view name) const;

  std::string path_;
  bool is_efivarfs_;
};

// For binaries with a "--efivars DIR" option: makes libefivar use DIR as its
// store. When the process was started with EFIVARFS_PATH=<absolute DIR>/
// already, returns at once. Otherwise sets it and re-executes
// /proc/self/exe with `argv` (null-terminated, argv[0] first), since
// libefivar reads EFIVARFS_PATH only when it is loaded; returns only on
// failure. Call it before anything else in main(). kNotFound when DIR does
// not exist, kInvalidArgument when it is not a directory.
Result<void> UseEfivarfsPathOrReexec(const std::string& dir, char* const argv[]);

// "BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c": the name efivarfs gives
// a variable, and the one error messages use.
std::string EfiVariableId(const EfiGuid& guid, std::string_view name);

}  // namespace ralph
