// ExecMonitor (see exec_monitor.h).
#include "exec_monitor.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

constexpr uint64_t kPageBytes = 4096;

// Copies up to `size` bytes at `address` of `pid` into `into`; returns how
// many were copied. The remote range is split at page boundaries, so a
// read that runs into an unmapped page still returns the bytes before it
// (process_vm_readv never splits one remote iovec).
size_t ReadRemote(pid_t pid, uint64_t address, char* into, size_t size) {
  constexpr size_t kMaxPieces = 4;
  iovec remote[kMaxPieces];
  size_t pieces = 0, planned = 0;
  while (planned < size && pieces < kMaxPieces) {
    uint64_t at = address + planned;
    size_t piece = std::min<uint64_t>(size - planned, kPageBytes - at % kPageBytes);
    remote[pieces++] = {reinterpret_cast<void*>(at), piece};
    planned += piece;
  }
  iovec local{into, planned};
  ssize_t n = ::process_vm_readv(pid, &local, 1, remote, pieces, 0);
  return n < 0 ? 0 : static_cast<size_t>(n);
}

// Whether `path` (relative to `dirfd` of `pid`, AT_FDCWD for its cwd) did
// not exist, as the caller would resolve it: absolute paths under the job's
// root `root` (RESOLVE_IN_ROOT), relative ones beneath the caller's
// directory. False when it exists or cannot be told (a magic link, a ".."
// or an absolute symlink in a relative path).
bool Missing(int root, pid_t pid, int dirfd, const std::string& path) {
  if (path.empty()) return false;
  UniqueFd dir;
  if (path[0] != '/') {
    std::string base = dirfd == AT_FDCWD ? fmt::format("/proc/{}/cwd", pid)
                                         : fmt::format("/proc/{}/fd/{}", pid, dirfd);
    dir.reset(::open(base.c_str(), O_PATH | O_CLOEXEC));
    if (!dir) return false;
  } else if (root < 0) {
    return false;
  }
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_NO_MAGICLINKS | (path[0] == '/' ? RESOLVE_IN_ROOT : RESOLVE_BENEATH);
  // Raw syscall: glibc 2.36 has no openat2 wrapper.
  UniqueFd file(static_cast<int>(
      ::syscall(SYS_openat2, dir ? dir.get() : root, path.c_str(), &how, sizeof how)));
  if (file) return false;
  return errno == ENOENT || errno == ENOTDIR;
}

}  // namespace

bool ReadRemoteString(pid_t pid, uint64_t address, size_t limit, std::string* out) {
  out->clear();
  char chunk[kPageBytes];
  // One byte more than the limit: a string of exactly `limit` bytes ends
  // with its NUL there.
  while (out->size() <= limit) {
    uint64_t at = address + out->size();
    size_t want = std::min<uint64_t>(limit + 1 - out->size(), kPageBytes - at % kPageBytes);
    size_t got = ReadRemote(pid, at, chunk, want);
    const char* end = static_cast<const char*>(std::memchr(chunk, 0, got));
    if (end) {
      out->append(chunk, static_cast<size_t>(end - chunk));
      return true;
    }
    out->append(chunk, got);
    if (got < want) break;  // unreadable from here
  }
  if (out->size() > limit) out->resize(limit);
  return false;
}

ExecMonitor::ExecMonitor(UniqueFd listener, UniqueFd root, ExecSyscalls numbers,
                         ExecRecordLimits limits, size_t notif_bytes, size_t response_bytes)
    : listener_(std::move(listener)),
      root_(std::move(root)),
      numbers_(numbers),
      limits_(limits),
      notif_(notif_bytes),
      response_(response_bytes),
      buffer_((limits.max_args + 1) * sizeof(uint64_t)) {}

Result<std::unique_ptr<ExecMonitor>> ExecMonitor::Create(UniqueFd listener, pid_t job_pid,
                                                         uint32_t audit_arch,
                                                         ExecRecordLimits limits) {
  ExecSyscalls numbers = TRY(ExecSyscallNumbers(audit_arch));
  seccomp_notif_sizes sizes{};
  if (::syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0)
    return Error::FromErrno("seccomp(SECCOMP_GET_NOTIF_SIZES)", errno);
  size_t notif_bytes = std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif));
  size_t response_bytes = std::max<size_t>(sizes.seccomp_notif_resp, sizeof(seccomp_notif_resp));
  // The kernel switches straight from the stopped caller to this thread and
  // back (on the caller's CPU) instead of waking it like any other waiter:
  // an exec then waits for no scheduler tick (Linux 6.6; ignored before).
  constexpr unsigned long kSetFlags = SECCOMP_IOW(4, __u64);  // SECCOMP_IOCTL_NOTIF_SET_FLAGS
  constexpr __u64 kSyncWakeUp = 1;                            // SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
  ::ioctl(listener.get(), kSetFlags, kSyncWakeUp);
  // Every process of the job has its root: chroot and pivot_root are denied
  // to it (no CAP_SYS_CHROOT, seccomp). Without it absolute paths are not
  // checked.
  UniqueFd root(::open(fmt::format("/proc/{}/root", job_pid).c_str(), O_PATH | O_CLOEXEC));
  return std::unique_ptr<ExecMonitor>(new ExecMonitor(std::move(listener), std::move(root), numbers,
                                                      limits, notif_bytes, response_bytes));
}

Result<std::optional<ExecRecord>> ExecMonitor::HandleOne() {
  std::fill(notif_.begin(), notif_.end(), 0);  // the kernel requires it zeroed
  auto* notif = reinterpret_cast<seccomp_notif*>(notif_.data());
  if (::ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_RECV, notif) != 0) {
    // ENOENT: the caller was killed between the wake-up and the receive.
    if (errno == ENOENT || errno == EINTR) return std::optional<ExecRecord>();
    return Error::FromErrno("receiving an exec notification", errno);
  }
  ExecRecord record;
  record.pid = static_cast<pid_t>(notif->pid);
  record.time = std::chrono::system_clock::now();
  const __u64* args = notif->data.args;
  bool at = notif->data.nr == static_cast<int>(numbers_.execveat);
  int dirfd = at ? static_cast<int>(args[0]) : AT_FDCWD;
  uint64_t path_address = at ? args[1] : args[0];
  uint64_t argv_address = at ? args[2] : args[1];
  record.path_truncated =
      !ReadRemoteString(record.pid, path_address, limits_.max_path_bytes, &record.path);
  bool relative = record.path.empty() || record.path[0] != '/';
  if (!record.path_truncated) record.missing = Missing(root_.get(), record.pid, dirfd, record.path);
  if (dirfd != AT_FDCWD && relative)
    record.path = fmt::format("fd:{}{}{}", dirfd, record.path.empty() ? "" : "/", record.path);

  if (argv_address != 0) {  // Linux takes a null argv as an empty one
    size_t got = ReadRemote(record.pid, argv_address, buffer_.data(), buffer_.size());
    size_t pointers = got / sizeof(uint64_t);
    size_t bytes = 0;
    bool ended = false;
    for (size_t i = 0; i < pointers; ++i) {
      uint64_t pointer;
      std::memcpy(&pointer, buffer_.data() + i * sizeof pointer, sizeof pointer);
      if (pointer == 0) {
        ended = true;
        break;
      }
      if (i == limits_.max_args) break;
      std::string arg;
      bool whole = ReadRemoteString(record.pid, pointer, limits_.max_argv_bytes - bytes, &arg);
      bytes += arg.size();
      record.argv.push_back(std::move(arg));
      if (!whole) break;
    }
    record.argv_truncated = !ended;
  }

  // Read from the caller only if it is still the caller: a pid reused after
  // it died would have given another process's memory.
  uint64_t id = notif->id;
  if (::ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0)
    return std::optional<ExecRecord>();
  std::fill(response_.begin(), response_.end(), 0);
  auto* response = reinterpret_cast<seccomp_notif_resp*>(response_.data());
  response->id = id;
  response->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  if (::ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_SEND, response) != 0) {
    if (errno == ENOENT) return std::optional<ExecRecord>();  // killed meanwhile
    return Error::FromErrno("answering an exec notification", errno);
  }
  return std::optional<ExecRecord>(std::move(record));
}

}  // namespace ralph::sandbox
