// An LD_PRELOAD shim for ralphd's audit crash test: it counts the calls
// that change the audit database's files (write, pwrite, pwrite64, ftruncate,
// fsync, fdatasync on a file whose path starts with $RALPH_KILL_PATH: the
// database, its -wal and -shm) and SIGKILLs its own process at the
// $RALPH_KILL_AT-th one: just before it, or just after it returned with
// RALPH_KILL_AFTER=1. $RALPH_KILL_REPORT holds the running count ("N") and,
// once killed, the point and the call ("killed before #N: pwrite64
// audit.db-wal 4152 bytes"). RALPH_KILL_AT=0 only counts. The product
// binary knows nothing of it: the test preloads it into the real ralphd.
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

const char* g_path = nullptr;
const char* g_report = nullptr;
long g_at = 0;
bool g_after = false;
std::atomic<long> g_count{0};

__attribute__((constructor)) void Init() {
  g_path = std::getenv("RALPH_KILL_PATH");
  g_report = std::getenv("RALPH_KILL_REPORT");
  const char* at = std::getenv("RALPH_KILL_AT");
  g_at = at ? std::atol(at) : 0;
  const char* after = std::getenv("RALPH_KILL_AFTER");
  g_after = after && std::strcmp(after, "1") == 0;
}

// Raw syscalls: the shim's own I/O must not come back through its wrappers.
void Report(const char* text) {
  if (!g_report) return;
  int fd = static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, g_report, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd < 0) return;
  syscall(SYS_write, fd, text, std::strlen(text));
  syscall(SYS_close, fd);
}

// The file behind `fd` is one of the audit database's.
bool Watched(int fd, char* name, size_t size) {
  if (!g_path || fd < 0) return false;
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = syscall(SYS_readlinkat, AT_FDCWD, link, name, size - 1);
  if (n <= 0) return false;
  name[n] = '\0';
  return std::strncmp(name, g_path, std::strlen(g_path)) == 0;
}

// Counts a call on a watched file; kills before it when aimed there.
// Returns its number (0: not watched).
long Before(int fd, const char* call, size_t bytes) {
  char name[512];
  if (!Watched(fd, name, sizeof name)) return 0;
  long n = ++g_count;
  char text[700];
  const char* base = std::strrchr(name, '/');
  std::snprintf(text, sizeof text, "%ld\n%s %s %zu bytes\n", n, call, base ? base + 1 : name,
                bytes);
  if (n == g_at) {
    char killed[800];
    std::snprintf(killed, sizeof killed, "killed %s #%s", g_after ? "after" : "before", text);
    if (!g_after) {
      Report(killed);
      ::kill(::getpid(), SIGKILL);
    }
  } else {
    Report(text);
  }
  return n;
}
void After(long n, const char* call) {
  if (n == 0 || n != g_at || !g_after) return;
  char killed[128];
  std::snprintf(killed, sizeof killed, "killed after #%ld\n%s\n", n, call);
  Report(killed);
  ::kill(::getpid(), SIGKILL);
}

template <typename F>
F Next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buf, size_t count) {
  static auto real = Next<ssize_t (*)(int, const void*, size_t)>("write");
  long n = Before(fd, "write", count);
  ssize_t rc = real(fd, buf, count);
  After(n, "write");
  return rc;
}
ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) {
  static auto real = Next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  long n = Before(fd, "pwrite", count);
  ssize_t rc = real(fd, buf, count, offset);
  After(n, "pwrite");
  return rc;
}
ssize_t pwrite64(int fd, const void* buf, size_t count, off64_t offset) {
  static auto real = Next<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
  long n = Before(fd, "pwrite64", count);
  ssize_t rc = real(fd, buf, count, offset);
  After(n, "pwrite64");
  return rc;
}
int ftruncate(int fd, off_t length) {
  static auto real = Next<int (*)(int, off_t)>("ftruncate");
  long n = Before(fd, "ftruncate", static_cast<size_t>(length));
  int rc = real(fd, length);
  After(n, "ftruncate");
  return rc;
}
int ftruncate64(int fd, off64_t length) {
  static auto real = Next<int (*)(int, off64_t)>("ftruncate64");
  long n = Before(fd, "ftruncate64", static_cast<size_t>(length));
  int rc = real(fd, length);
  After(n, "ftruncate64");
  return rc;
}
int fsync(int fd) {
  static auto real = Next<int (*)(int)>("fsync");
  long n = Before(fd, "fsync", 0);
  int rc = real(fd);
  After(n, "fsync");
  return rc;
}
int fdatasync(int fd) {
  static auto real = Next<int (*)(int)>("fdatasync");
  long n = Before(fd, "fdatasync", 0);
  int rc = real(fd);
  After(n, "fdatasync");
  return rc;
}

}  // extern "C"
