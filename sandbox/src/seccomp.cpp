#include "sandbox/seccomp.h"

#include <linux/audit.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::sandbox {
namespace {

struct ScmpFilterDeleter {
  void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};
using ScopedScmpFilter = std::unique_ptr<void, ScmpFilterDeleter>;

Error ScmpError(std::string_view what, int rc) {
  return Error::FromErrno(ErrorCode::kInternal, what, -rc);
}

// The policy's argument denials as classic BPF, to run before the
// libseccomp program: for each denial, when the call is that syscall of
// `audit_arch` and the low 32 bits of the argument equal one of the values,
// return SECCOMP_RET_ERRNO; otherwise fall through past the end of these
// instructions. BPF jumps are relative and only go forward, so the libseccomp
// program appended afterwards runs unchanged from its first instruction
// (which reloads the architecture itself). Pure.
Result<std::vector<sock_filter>> CompileDenials(const std::vector<SeccompArgumentDenial>& denials,
                                                uint32_t audit_arch) {
  std::vector<sock_filter> blocks;
  for (const SeccompArgumentDenial& denial : denials) {
    int nr = seccomp_syscall_resolve_name_arch(audit_arch, denial.syscall.c_str());
    if (nr == __NR_SCMP_ERROR)
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("seccomp policy: denial of unknown syscall '{}'", denial.syscall));
    if (denial.index > 5 || denial.values.empty() || denial.values.size() > 200 ||
        denial.errno_value <= 0 || denial.errno_value > 4095)
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("seccomp policy: denial for {}: argument {} of 0..5, "
                      "1..200 values (got {}), errno {} of 1..4095",
                      denial.syscall, denial.index, denial.values.size(), denial.errno_value));
    if (nr < 0) continue;  // this architecture lacks the syscall
    // The low half of the 64-bit argument: first on little-endian ABIs.
    uint32_t offset = static_cast<uint32_t>(offsetof(seccomp_data, args) + 8 * denial.index +
                                            ((audit_arch & __AUDIT_ARCH_LE) ? 0 : 4));
    const size_t n = denial.values.size();
    blocks.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
    // Not this syscall: skip the argument load, the n compares and the return.
    blocks.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0,
                              static_cast<uint8_t>(n + 2)));
    blocks.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset));
    for (size_t k = 0; k < n; ++k) {
      // Match: jump to the return after the last compare. No match on the
      // last value: jump over that return.
      blocks.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, denial.values[k],
                                static_cast<uint8_t>(n - 1 - k),
                                static_cast<uint8_t>(k + 1 == n ? 1 : 0)));
    }
    blocks.push_back(
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | static_cast<uint32_t>(denial.errno_value)));
  }
  if (blocks.empty()) return blocks;
  if (blocks.size() > 255)
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("seccomp policy: argument denials need {} instructions, "
                                   "more than one jump can skip (255)",
                                   blocks.size()));
  std::vector<sock_filter> out;
  out.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  // Another architecture: straight to the libseccomp program, which kills it.
  out.push_back(
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 0, static_cast<uint8_t>(blocks.size())));
  out.insert(out.end(), blocks.begin(), blocks.end());
  return out;
}

}  // namespace

SeccompProgram::SeccompProgram(std::vector<sock_filter> filter, std::vector<std::string> skipped)
    : filter_(std::move(filter)), skipped_(std::move(skipped)) {
  fprog_.len = static_cast<unsigned short>(filter_.size());
  fprog_.filter = filter_.data();
}

SeccompProgram::SeccompProgram(SeccompProgram&& other) noexcept
    : filter_(std::move(other.filter_)), skipped_(std::move(other.skipped_)) {
  fprog_.len = static_cast<unsigned short>(filter_.size());
  fprog_.filter = filter_.data();
}

SeccompProgram& SeccompProgram::operator=(SeccompProgram&& other) noexcept {
  filter_ = std::move(other.filter_);
  skipped_ = std::move(other.skipped_);
  fprog_.len = static_cast<unsigned short>(filter_.size());
  fprog_.filter = filter_.data();
  return *this;
}

Result<void> SeccompAssumeApiLevel(unsigned level) {
  if (int rc = seccomp_api_set(level); rc < 0)
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("libseccomp API level {}: {}", level, std::strerror(-rc)));
  return {};
}

Result<SeccompProgram> SeccompProgram::Compile(const SeccompPolicy& policy, uint32_t audit_arch) {
  if (audit_arch == 0) audit_arch = seccomp_arch_native();
  if (audit_arch != AUDIT_ARCH_X86_64 && audit_arch != AUDIT_ARCH_AARCH64)
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("seccomp: unsupported audit arch {:#x}", audit_arch));
  const auto& denied = AlwaysDeniedSyscalls();
  for (const SeccompRule& rule : policy.rules) {
    bool is_denied = std::find(denied.begin(), denied.end(), rule.syscall) != denied.end();
    if (is_denied && rule.alternatives.empty() && rule.errno_value == 0)
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("seccomp policy: {} must never be allowed unconditionally", rule.syscall));
  }
  ScopedScmpFilter ctx(seccomp_init(SCMP_ACT_ERRNO(static_cast<uint32_t>(policy.default_errno))));
  if (!ctx) return Error::Make(ErrorCode::kInternal, "seccomp_init failed");
  int rc;
  // Another architecture's calls (x32 or 32-bit compat on the same CPU) are
  // an escape attempt: kill.
  if ((rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) < 0)
    return ScmpError("seccomp_attr_set BADARCH", rc);
  // A binary tree over the syscall numbers instead of a linear list: 22%
  // more instructions (x86_64: 403, not 329), but loading it in each job's
  // child is ~30% cheaper (median 425-455 us, not 610-650, fork + seccomp()
  // 300 times here): the kernel emulates the filter for every syscall number
  // to fill its allow-cache (seccomp_cache_prepare, with the siglock held)
  // and a lookup walks ~9 compares instead of up to ~250. The job's own
  // syscalls that miss the cache are cheaper too.
  if ((rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2)) < 0)
    return ScmpError("seccomp_attr_set OPTIMIZE", rc);
  if (seccomp_arch_native() != audit_arch) {
    if ((rc = seccomp_arch_add(ctx.get(), audit_arch)) < 0)
      return ScmpError("seccomp_arch_add", rc);
    if ((rc = seccomp_arch_remove(ctx.get(), SCMP_ARCH_NATIVE)) < 0)
      return ScmpError("seccomp_arch_remove", rc);
  }
  std::vector<std::string> skipped;
  for (const SeccompRule& rule : policy.rules) {
    int target_nr = seccomp_syscall_resolve_name_arch(audit_arch, rule.syscall.c_str());
    if (target_nr == __NR_SCMP_ERROR) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("seccomp policy: unknown syscall '{}'", rule.syscall));
    }
    if (target_nr < 0) {  // a libseccomp pseudo-number: this arch lacks it
      skipped.push_back(rule.syscall);
      continue;
    }
    // Rules take the syscall number of the native architecture (or its
    // pseudo-number); libseccomp translates it by name for the filter's arch.
    int nr = seccomp_syscall_resolve_name(rule.syscall.c_str());
    uint32_t action = rule.errno_value == 0
                          ? SCMP_ACT_ALLOW
                          : SCMP_ACT_ERRNO(static_cast<uint32_t>(rule.errno_value));
    if (rule.alternatives.empty()) {
      if ((rc = seccomp_rule_add(ctx.get(), action, nr, 0)) < 0)
        return ScmpError(fmt::format("seccomp_rule_add {}", rule.syscall), rc);
      continue;
    }
    for (const ArgMaskedEq& cond : rule.alternatives) {
      scmp_arg_cmp cmp{cond.index, SCMP_CMP_MASKED_EQ, cond.mask, cond.value};
      if ((rc = seccomp_rule_add_array(ctx.get(), action, nr, 1, &cmp)) < 0)
        return ScmpError(fmt::format("seccomp_rule_add {} (arg{} & {:#x} == {:#x})", rule.syscall,
                                     cond.index, cond.mask, cond.value),
                         rc);
    }
  }
  // libseccomp 2.5 exports only to an fd; a memfd keeps it in memory.
  UniqueFd memfd(static_cast<int>(::memfd_create("ralph-seccomp", MFD_CLOEXEC)));
  if (!memfd) return Error::FromErrno("memfd_create", errno);
  if ((rc = seccomp_export_bpf(ctx.get(), memfd.get())) < 0)
    return ScmpError("seccomp_export_bpf", rc);
  off_t size = ::lseek(memfd.get(), 0, SEEK_END);
  if (size <= 0 || size % static_cast<off_t>(sizeof(sock_filter)) != 0)
    return Error::Make(ErrorCode::kInternal,
                       fmt::format("seccomp_export_bpf wrote {} bytes", size));
  std::vector<sock_filter> filter =
      TRY(CompileDenials(policy.denials, audit_arch));  // run first: see CompileDenials
  size_t prefix = filter.size();
  filter.resize(prefix + static_cast<size_t>(size) / sizeof(sock_filter));
  if (::pread(memfd.get(), filter.data() + prefix, static_cast<size_t>(size), 0) != size)
    return Error::FromErrno("reading the exported seccomp program", errno);
  if (filter.size() > BPF_MAXINSNS)
    return Error::Make(ErrorCode::kInternal,
                       fmt::format("seccomp program has {} instructions", filter.size()));
  return SeccompProgram(std::move(filter), std::move(skipped));
}

int LoadSeccompProgram(const sock_fprog* program) {
  // Raw syscall: glibc has no seccomp() wrapper, and prctl(PR_SET_SECCOMP)
  // cannot pass SECCOMP_FILTER_FLAG_LOG.
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, program) != 0)
    return errno;
  return 0;
}

Result<ExecSyscalls> ExecSyscallNumbers(uint32_t audit_arch) {
  if (audit_arch == 0) audit_arch = seccomp_arch_native();
  // Fixed by each architecture's ABI (its unistd.h).
  switch (audit_arch) {
    case AUDIT_ARCH_X86_64: return ExecSyscalls{59, 322};
    case AUDIT_ARCH_AARCH64: return ExecSyscalls{221, 281};
    default:
      return Error::Make(ErrorCode::kUnsupported,
                         fmt::format("seccomp: unsupported audit arch {:#x}", audit_arch));
  }
}

Result<std::vector<sock_filter>> ExecNotifyFilter(uint32_t audit_arch) {
  if (audit_arch == 0) audit_arch = seccomp_arch_native();
  ExecSyscalls numbers = TRY(ExecSyscallNumbers(audit_arch));
  uint32_t execve_nr = numbers.execve, execveat_nr = numbers.execveat;
  // Another architecture's calls are allowed here: the job's own filter
  // kills them.
  return std::vector<sock_filter>{
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 0, 4),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, execve_nr, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, execveat_nr, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
}

int LoadExecNotifyFilter(const sock_fprog* program, int* listener) {
  long fd =
      ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, program);
  if (fd < 0) return errno;
  *listener = static_cast<int>(fd);
  return 0;
}

}  // namespace ralph::sandbox
