// Spawner: starts a SandboxService's job children vfork-style (private).
//
// A fork-style clone3 (no CLONE_VM) copies the service's page tables, makes
// every page of the service copy-on-write (the service then takes a write
// fault, and a TLB shootdown to every CPU the mm ran on, for each page it
// touches afterwards) and has the child tear its copy down again at execve.
// With CLONE_VM the child shares the service's memory until execve instead:
// none of that happens. CLONE_VFORK keeps the spawning thread blocked until
// the child has exec'd or exited, so the child may use that thread's TLS
// (errno, the stack protector's canary) as its own; that thread is this
// class's own, one persistent thread with every signal blocked, so Run's
// caller keeps running (it writes the child's id maps, attaches cgroups and
// sets up the network while the child waits).
//
// Contract for `entry` (it runs in the child, on the spawner's stack, with
// every signal blocked and every handler reset to SIG_DFL by
// CLONE_CLEAR_SIGHAND, ignored signals still ignored):
//  - it shares the service's memory: it must write nothing of the
//    service's (no allocation, no locks, no logging; syscalls only) and may
//    read only what the caller keeps unchanged until the child has exec'd
//    or been reaped;
//  - its first act is one byte written to its end of the socket whose
//    other end the caller passes to AwaitChild;
//  - it ends in execve or _exit (returning exit_group(127)s).
// While a child runs, the spawner thread is blocked in clone3 and cannot take
// glibc's SIGSETXID: a set*id() call by another thread of the service waits
// until the child has exec'd or exited (so Run's caller must make none while
// its child waits to be released; the service makes none).
// Credential changes in the child (setresuid, capset) reset the dumpable
// flag of the shared mm, i.e. the service's (commit_creds); the spawner puts
// it back once the child has exec'd or exited.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::sandbox {

struct SpawnRequest {
  // Namespace flags and the like; the spawner adds CLONE_VM | CLONE_VFORK |
  // CLONE_PIDFD | CLONE_PARENT_SETTID | CLONE_CLEAR_SIGHAND.
  uint64_t flags = 0;
  int cgroup_fd = -1;  // with CLONE_INTO_CGROUP in flags
  void (*entry)(void*) = nullptr;
  void* arg = nullptr;
};

struct SpawnedChild {
  pid_t pid = -1;  // in the service's pid namespace
  UniqueFd pidfd;
};

class Spawner {
 public:
  // Maps the child stack (with a guard page) and starts the thread.
  static Result<std::unique_ptr<Spawner>> Create();
  // Waits for a spawn in progress (its child must exec or exit), stops the
  // thread.
  ~Spawner();
  Spawner(const Spawner&) = delete;
  Spawner& operator=(const Spawner&) = delete;

  // Waits until the previous spawn, if any, has finished (its child exec'd
  // or exited: the stack is free again), then hands `request` to the
  // thread and returns. Every Spawn must be followed by AwaitChild.
  void Spawn(const SpawnRequest& request);
  // Blocks until the child has written its first byte to the other end of
  // `hello_fd` (read here) or the spawn has finished, and returns the child
  // (the kernel wrote its pid and pidfd before the child ran), or the
  // clone3 error. A child returned here may already have exited; the caller
  // reaps it through the pidfd.
  Result<SpawnedChild> AwaitChild(int hello_fd);

  static constexpr size_t kStackBytes = 256 << 10;

 private:
  Spawner(void* mapping, size_t mapping_bytes, size_t guard_bytes, UniqueFd done);
  void Loop();
  // Blocks until the thread is idle; the last spawn's clone3 errno (0: it
  // made a child).
  int WaitIdle();

  void* mapping_;
  size_t mapping_bytes_;
  size_t guard_bytes_;
  UniqueFd done_;  // eventfd: a spawn finished

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool pending_ = false;  // a request waits for the thread
  bool busy_ = false;     // a spawn was handed over and not yet collected
  SpawnRequest request_;
  int clone_error_ = 0;
  // Written by the kernel (CLONE_PARENT_SETTID, CLONE_PIDFD) before the child
  // runs.
  pid_t child_pid_ = -1;
  int child_pidfd_ = -1;
  pthread_t thread_{};
  bool started_ = false;
};

}  // namespace ralph::sandbox
