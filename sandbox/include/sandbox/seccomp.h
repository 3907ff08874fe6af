// The seccomp filter: a policy compiled with libseccomp into a classic-BPF
// program (the default policy's at build time, see Default()), loaded by
// every job's child right before execve with seccomp(2) (no libseccomp
// calls, no allocation in the child).
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <string>
#include <vector>

#include "platform/result.h"
#include "sandbox/plan.h"

namespace ralph::sandbox {

class SeccompProgram {
 public:
  // Compiles `policy` for the architecture whose AUDIT_ARCH_* value is
  // `audit_arch` (ralph::arch::SeccompAuditArch() for the running one, or 0
  // for the one this binary was built for; AUDIT_ARCH_X86_64 and
  // AUDIT_ARCH_AARCH64 are supported). Syscalls the
  // architecture lacks are skipped. Calls from any other architecture (x32,
  // i386 compat) kill the process. kInvalidArgument when the policy allows an
  // always-denied syscall unconditionally or names an unknown syscall.
  static Result<SeccompProgram> Compile(const SeccompPolicy& policy, uint32_t audit_arch);

  // Compile(DefaultSeccompPolicy(), audit_arch) as the build made it
  // (tools/seccomp-gen): no libseccomp work at run time. `audit_arch` 0 is the
  // architecture this binary was built for. kUnsupported for architectures
  // other than x86_64 and aarch64.
  static Result<SeccompProgram> Default(uint32_t audit_arch);

  // The program for seccomp(SECCOMP_SET_MODE_FILTER); valid while this
  // object lives.
  const sock_fprog* program() const { return &fprog_; }
  size_t instruction_count() const { return filter_.size(); }
  const std::vector<sock_filter>& instructions() const { return filter_; }
  // Syscall names of the policy that the architecture does not have.
  const std::vector<std::string>& skipped() const { return skipped_; }

  SeccompProgram(SeccompProgram&& other) noexcept;
  SeccompProgram& operator=(SeccompProgram&& other) noexcept;
  SeccompProgram(const SeccompProgram&) = delete;
  SeccompProgram& operator=(const SeccompProgram&) = delete;

 private:
  SeccompProgram(std::vector<sock_filter> filter, std::vector<std::string> skipped);
  std::vector<sock_filter> filter_;
  std::vector<std::string> skipped_;
  sock_fprog fprog_{};
};

// Makes Compile() assume the kernel features of libseccomp's API `level`
// (seccomp_api_set) instead of probing the running kernel, for the
// build-time generator (tools/seccomp-gen): its tables must not depend on
// the machine that builds them. Under qemu-user (an aarch64 cross-build)
// the probe sees no seccomp(2) at all and Compile() would refuse
// SCMP_ACT_KILL_PROCESS. Loading a program still needs a kernel with those
// features. kInvalidArgument for a level libseccomp does not know.
Result<void> SeccompAssumeApiLevel(unsigned level);

// Loads `program` on the calling thread with SECCOMP_FILTER_FLAG_LOG, so
// denied calls reach the audit log. Returns 0 or an errno. Async-signal-safe.
int LoadSeccompProgram(const sock_fprog* program);

// The exec-recording filter (SandboxSpec::record_exec): execve and execveat
// of `audit_arch` (0: the build's) return SECCOMP_RET_USER_NOTIF, everything
// else SECCOMP_RET_ALLOW (the job's allowlist, a filter of its own, still
// decides: the strictest action of all filters wins, and USER_NOTIF is
// stricter only than ALLOW, LOG and TRACE). kUnsupported for architectures
// other than x86_64 and aarch64. Pure.
Result<std::vector<sock_filter>> ExecNotifyFilter(uint32_t audit_arch);

struct ExecSyscalls {
  uint32_t execve;
  uint32_t execveat;
};
// The numbers of execve and execveat on `audit_arch` (0: the build's);
// kUnsupported as above.
Result<ExecSyscalls> ExecSyscallNumbers(uint32_t audit_arch);

// Loads `program` with SECCOMP_FILTER_FLAG_NEW_LISTENER; on success
// *listener is the notification fd (O_CLOEXEC). Needs no_new_privs (or
// CAP_SYS_ADMIN). A thread has at most one listener in its filter chain
// (EBUSY). Returns 0 or an errno. Async-signal-safe.
int LoadExecNotifyFilter(const sock_fprog* program, int* listener);

}  // namespace ralph::sandbox
