#include "sandbox/landlock.h"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace ralph::sandbox {
namespace {

// The ABI structures as of ABI 6 (Linux 6.12); Debian 12's UAPI headers stop
// at ABI 2, and the kernel accepts the larger struct by its size.
struct RulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};
constexpr uint64_t kAccessFsRefer = 1ull << 13;       // ABI 2
constexpr uint64_t kAccessFsTruncate = 1ull << 14;    // ABI 3
constexpr uint64_t kAccessFsIoctlDev = 1ull << 15;    // ABI 5
constexpr uint64_t kScopeAbstractUnix = 1ull << 0;    // ABI 6
constexpr uint64_t kScopeSignal = 1ull << 1;          // ABI 6
constexpr uint64_t kAccessFsAbi1 = (1ull << 13) - 1;  // EXECUTE .. MAKE_SYM

// Raw syscalls throughout: glibc has no Landlock wrappers.
long CreateRuleset(const RulesetAttr* attr, size_t size, uint32_t flags) {
  return ::syscall(SYS_landlock_create_ruleset, attr, size, flags);
}

}  // namespace

int LandlockAbiVersion() {
  long abi = CreateRuleset(nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  return abi < 0 ? 0 : static_cast<int>(abi);
}

uint64_t LandlockHandledAccessFs(int abi) {
  if (abi < 1) return 0;
  uint64_t access = kAccessFsAbi1;
  if (abi >= 2) access |= kAccessFsRefer;
  if (abi >= 3) access |= kAccessFsTruncate;
  if (abi >= 5) access |= kAccessFsIoctlDev;
  return access;
}

uint64_t LandlockScopes(int abi) {
  return abi >= 6 ? (kScopeAbstractUnix | kScopeSignal) : 0;
}

int ApplyLandlockInChild(int abi) {
  if (abi < 1) return 0;
  RulesetAttr attr{LandlockHandledAccessFs(abi), 0, LandlockScopes(abi)};
  // Before ABI 6 the kernel knows only the first (ABI 1-3) or first two
  // (ABI 4-5) fields and rejects a larger struct with non-zero unknown fields.
  size_t size = abi >= 6 ? sizeof attr : abi >= 4 ? 2 * sizeof(uint64_t) : sizeof(uint64_t);
  long ruleset = CreateRuleset(&attr, size, 0);
  if (ruleset < 0) return errno;
  int ruleset_fd = static_cast<int>(ruleset);
  // Raw open/close: this runs in the job's child, which must not use
  // glibc's cancellation points (sandbox/src/child.h).
  int root =
      static_cast<int>(::syscall(SYS_openat, AT_FDCWD, "/", O_PATH | O_CLOEXEC | O_DIRECTORY));
  if (root < 0) {
    int err = errno;
    ::syscall(SYS_close, ruleset_fd);
    return err;
  }
  landlock_path_beneath_attr beneath{};
  beneath.allowed_access = attr.handled_access_fs;
  beneath.parent_fd = root;
  int err = 0;
  if (::syscall(SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0) != 0) {
    err = errno;
  } else if (::syscall(SYS_landlock_restrict_self, ruleset_fd, 0) != 0) {
    err = errno;
  }
  ::syscall(SYS_close, root);
  ::syscall(SYS_close, ruleset_fd);
  return err;
}

}  // namespace ralph::sandbox
