// Spawner: see spawner.h for why children are spawned with CLONE_VM.
#include "spawner.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "clone_trampoline.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace ralph::sandbox {
namespace {

Error Io(std::string_view what) {
  return Error::FromErrno(what, errno);
}

}  // namespace

Spawner::Spawner(void* mapping, size_t mapping_bytes, size_t guard_bytes, UniqueFd done)
    : mapping_(mapping),
      mapping_bytes_(mapping_bytes),
      guard_bytes_(guard_bytes),
      done_(std::move(done)) {}

Result<std::unique_ptr<Spawner>> Spawner::Create() {
  UniqueFd done(::eventfd(0, EFD_CLOEXEC));
  if (!done) return Io("spawner: eventfd");
  size_t guard = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  size_t bytes = guard + kStackBytes;
  // The child's stack; the lowest page stays inaccessible, so an overflow
  // faults instead of writing the service's memory below it.
  void* mapping = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (mapping == MAP_FAILED) return Io("spawner: mmap of the child stack");
  if (::mprotect(mapping, guard, PROT_NONE) != 0) {
    Error error = Io("spawner: mprotect of the stack guard");
    ::munmap(mapping, bytes);
    return error;
  }
  std::unique_ptr<Spawner> spawner(new Spawner(mapping, bytes, guard, std::move(done)));
  // Born with every signal blocked (no window in which a handler could run
  // on it), so its children are too: no handler of the service can run in a
  // child that shares its memory. glibc keeps its two internal signals
  // (SIGCANCEL, SIGSETXID) unblockable; CLONE_CLEAR_SIGHAND gives the child
  // the default action for them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  int err = ::pthread_create(
      &thread, nullptr,
      [](void* self) -> void* {
        static_cast<Spawner*>(self)->Loop();
        return nullptr;
      },
      spawner.get());
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) {
    ::munmap(mapping, bytes);
    spawner->mapping_ = nullptr;
    return Error::FromErrno("spawner: pthread_create", err);
  }
  spawner->thread_ = thread;
  spawner->started_ = true;
  return spawner;
}

Spawner::~Spawner() {
  if (started_) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    ::pthread_join(thread_, nullptr);
  }
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

void Spawner::Loop() {
  ::pthread_setname_np(::pthread_self(), "ralph-spawner");
  for (;;) {
    SpawnRequest request;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || pending_; });
      if (!pending_) return;
      request = request_;
      pending_ = false;
    }
    clone_args args;
    std::memset(&args, 0, sizeof args);
    args.flags = request.flags | CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_PARENT_SETTID |
                 CLONE_CLEAR_SIGHAND;
    // The kernel ABI passes pointers as u64.
    args.pidfd = reinterpret_cast<uint64_t>(&child_pidfd_);
    args.parent_tid = reinterpret_cast<uint64_t>(&child_pid_);
    args.exit_signal = SIGCHLD;
    args.stack = reinterpret_cast<uint64_t>(static_cast<char*>(mapping_) + guard_bytes_);
    args.stack_size = kStackBytes;
    if (request.cgroup_fd >= 0) args.cgroup = static_cast<uint64_t>(request.cgroup_fd);
    int dumpable = ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    // Returns once the child has exec'd or exited (CLONE_VFORK). errno may
    // have been written by the child meanwhile (it is this thread's): only
    // the return value counts.
    long rc = RalphSandboxClone3OnStack(&args, sizeof args, request.entry, request.arg);
    // The child's credential changes made the shared mm, ours, undumpable
    // (commit_creds: set_dumpable(mm, suid_dumpable)); no core dumps and
    // root-owned /proc/<pid> files for the service otherwise.
    if (rc > 0 && dumpable == 1 && ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1)
      ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#if defined(__SANITIZE_ADDRESS__)
    // Instrumented code the child called may have left redzones poisoned on
    // the stack (it never returned from its first frame); the next child
    // starts on a clean one.
    __asan_unpoison_memory_region(static_cast<char*>(mapping_) + guard_bytes_, kStackBytes);
#endif
    {
      std::lock_guard lock(mutex_);
      clone_error_ = rc < 0 ? static_cast<int>(-rc) : 0;
    }
    uint64_t one = 1;
    ssize_t ignored = ::write(done_.get(), &one, sizeof one);  // cannot fail: counter < 2^64-1
    (void)ignored;
  }
}

int Spawner::WaitIdle() {
  if (!busy_) return clone_error_;
  uint64_t count = 0;
  ssize_t n;
  do {
    n = ::read(done_.get(), &count, sizeof count);
  } while (n < 0 && errno == EINTR);
  busy_ = false;
  std::lock_guard lock(mutex_);
  return clone_error_;
}

void Spawner::Spawn(const SpawnRequest& request) {
  WaitIdle();
  {
    std::lock_guard lock(mutex_);
    request_ = request;
    pending_ = true;
    clone_error_ = 0;
    child_pid_ = -1;
    child_pidfd_ = -1;
  }
  busy_ = true;
  wake_.notify_one();
}

Result<SpawnedChild> Spawner::AwaitChild(int hello_fd) {
  if (!busy_) return Error::Make(ErrorCode::kInvalidState, "spawner: no spawn in progress");
  for (bool waiting = true; waiting;) {
    pollfd fds[2] = {{hello_fd, POLLIN, 0}, {done_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      // Transient: the child (if clone3 made one) waits for us, so wait on.
      // EFAULT/EINVAL cannot happen with these two entries.
      if (errno == EINTR || errno == ENOMEM || errno == EAGAIN) continue;
      return Io("spawner: poll");
    }
    if (fds[0].revents) {
      char hello;
      ssize_t n;
      do {
        n = ::read(hello_fd, &hello, 1);
      } while (n < 0 && errno == EINTR);
      if (n == 1) break;
      waiting = false;  // EOF: the child is gone; the spawn finishes
    }
    if (fds[1].revents) waiting = false;
    if (!waiting) {
      if (int err = WaitIdle(); err != 0) return Error::FromErrno("clone3", err);
    }
  }
  // Written by the kernel in clone3, before the child ran: ordered before the
  // child's byte (or the spawn's end) seen above. Volatile: no C++ store the
  // compiler knows of made them.
  SpawnedChild child;
  child.pid = *static_cast<volatile pid_t*>(&child_pid_);
  child.pidfd.reset(*static_cast<volatile int*>(&child_pidfd_));
  child_pidfd_ = -1;
  return child;
}

}  // namespace ralph::sandbox
