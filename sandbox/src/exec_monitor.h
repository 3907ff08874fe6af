// ExecMonitor: the service's side of a job's exec notifications
// (SandboxSpec::record_exec; private).
//
// The job's child loads ExecNotifyFilter with a new listener (seccomp.h) and
// hands the listener fd to the service over its sync socket; from then on
// every execve/execveat of the job stops at its entry until HandleOne has
// read the caller's path and argv (process_vm_readv, bounded by
// ExecRecordLimits), checked that the caller is still the one that called
// (SECCOMP_IOCTL_NOTIF_ID_VALID: its pid was not reused meanwhile) and
// answered SECCOMP_USER_NOTIF_FLAG_CONTINUE: the kernel then runs the exec
// as if nothing had stopped it. Nothing is decided here: it is a record.
//
// If the listener is closed (the service or its job went away) the kernel
// fails the execs that wait and every later one with ENOSYS; a job is never
// left stopped without a supervisor.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <vector>

#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/seccomp.h"
#include "sandbox/service.h"

namespace ralph::sandbox {

class ExecMonitor {
 public:
  // `listener`: the notification fd of ExecNotifyFilter(audit_arch);
  // `job_pid`: the job's PID 1 (whose root every process of the job has),
  // once it has pivoted into it.
  static Result<std::unique_ptr<ExecMonitor>> Create(UniqueFd listener, pid_t job_pid,
                                                     uint32_t audit_arch, ExecRecordLimits limits);

  // Readable (POLLIN) when an exec waits; POLLHUP once no process of the
  // job is left.
  int fd() const { return listener_.get(); }

  // Receives one waiting exec, reads it and lets it continue. nullopt when
  // its caller was killed before it was answered (no exec happened).
  // Blocks when nothing waits: call it when fd() is readable.
  Result<std::optional<ExecRecord>> HandleOne();

 private:
  ExecMonitor(UniqueFd listener, UniqueFd root, ExecSyscalls numbers, ExecRecordLimits limits,
              size_t notif_bytes, size_t response_bytes);

  UniqueFd listener_;
  UniqueFd root_;  // the job's root directory (O_PATH), or -1
  ExecSyscalls numbers_;
  ExecRecordLimits limits_;
  // Sized as the running kernel says (SECCOMP_GET_NOTIF_SIZES): its structs
  // may be larger than this build's headers.
  std::vector<unsigned char> notif_;
  std::vector<unsigned char> response_;
  std::vector<char> buffer_;
};

// Reads the NUL-terminated string at `address` in `pid`, at most `limit`
// bytes of it, into `out`. True when the whole string was read; false when
// it is longer than `limit` or its memory ends unreadable (what could be
// read is in `out`).
bool ReadRemoteString(pid_t pid, uint64_t address, size_t limit, std::string* out);

}  // namespace ralph::sandbox
