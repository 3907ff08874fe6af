#include "killing_vfs.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace ralph::audit::testing {
namespace {

sqlite3_vfs* g_base = nullptr;
sqlite3_vfs g_vfs;
KillAt g_at;
std::string g_report_path;
int64_t g_count = 0;

// Our file object: the wrapper's methods, then the base VFS's file.
struct File {
  sqlite3_file base;
  const char* name;
  sqlite3_file* Real() { return reinterpret_cast<sqlite3_file*>(this + 1); }
};
File* Of(sqlite3_file* f) {
  return reinterpret_cast<File*>(f);
}

std::string ShortName(const char* name) {
  if (name == nullptr) return "(temp)";
  const char* slash = std::strrchr(name, '/');
  return slash ? slash + 1 : name;
}

void Report(const std::string& what) {
  std::string text = fmt::format("{}\n{}\n", DescribeKillAt(g_at), what);
  int fd = ::open(g_report_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0) {
    (void)!::write(fd, text.data(), text.size());
    ::close(fd);
  }
  ::raise(SIGKILL);
}

// Counts one file change; returns its number. Kills before it when aimed.
int64_t Before(const std::string& what) {
  int64_t n = ++g_count;
  if (g_at.io == n && !g_at.after) Report(what);
  return n;
}
void After(int64_t n, const std::string& what) {
  if (g_at.io == n && g_at.after) Report(what);
}

int Close(sqlite3_file* f) {
  int rc = Of(f)->Real()->pMethods->xClose(Of(f)->Real());
  return rc;
}
int Read(sqlite3_file* f, void* buf, int amount, sqlite3_int64 offset) {
  return Of(f)->Real()->pMethods->xRead(Of(f)->Real(), buf, amount, offset);
}
int Write(sqlite3_file* f, const void* buf, int amount, sqlite3_int64 offset) {
  std::string what = fmt::format("write {} {} bytes at {}", ShortName(Of(f)->name), amount, offset);
  int64_t n = Before(what);
  int rc = Of(f)->Real()->pMethods->xWrite(Of(f)->Real(), buf, amount, offset);
  After(n, what);
  return rc;
}
int Truncate(sqlite3_file* f, sqlite3_int64 size) {
  std::string what = fmt::format("truncate {} to {} bytes", ShortName(Of(f)->name), size);
  int64_t n = Before(what);
  int rc = Of(f)->Real()->pMethods->xTruncate(Of(f)->Real(), size);
  After(n, what);
  return rc;
}
int Sync(sqlite3_file* f, int flags) {
  std::string what = fmt::format("sync {}", ShortName(Of(f)->name));
  int64_t n = Before(what);
  int rc = Of(f)->Real()->pMethods->xSync(Of(f)->Real(), flags);
  After(n, what);
  return rc;
}
int FileSize(sqlite3_file* f, sqlite3_int64* size) {
  return Of(f)->Real()->pMethods->xFileSize(Of(f)->Real(), size);
}
int Lock(sqlite3_file* f, int level) {
  return Of(f)->Real()->pMethods->xLock(Of(f)->Real(), level);
}
int Unlock(sqlite3_file* f, int level) {
  return Of(f)->Real()->pMethods->xUnlock(Of(f)->Real(), level);
}
int CheckReservedLock(sqlite3_file* f, int* out) {
  return Of(f)->Real()->pMethods->xCheckReservedLock(Of(f)->Real(), out);
}
int FileControl(sqlite3_file* f, int op, void* arg) {
  return Of(f)->Real()->pMethods->xFileControl(Of(f)->Real(), op, arg);
}
int SectorSize(sqlite3_file* f) {
  return Of(f)->Real()->pMethods->xSectorSize(Of(f)->Real());
}
int DeviceCharacteristics(sqlite3_file* f) {
  return Of(f)->Real()->pMethods->xDeviceCharacteristics(Of(f)->Real());
}
int ShmMap(sqlite3_file* f, int page, int size, int extend, void volatile** out) {
  return Of(f)->Real()->pMethods->xShmMap(Of(f)->Real(), page, size, extend, out);
}
int ShmLock(sqlite3_file* f, int offset, int n, int flags) {
  return Of(f)->Real()->pMethods->xShmLock(Of(f)->Real(), offset, n, flags);
}
void ShmBarrier(sqlite3_file* f) {
  Of(f)->Real()->pMethods->xShmBarrier(Of(f)->Real());
}
int ShmUnmap(sqlite3_file* f, int remove) {
  return Of(f)->Real()->pMethods->xShmUnmap(Of(f)->Real(), remove);
}
int Fetch(sqlite3_file* f, sqlite3_int64 offset, int amount, void** out) {
  return Of(f)->Real()->pMethods->xFetch(Of(f)->Real(), offset, amount, out);
}
int Unfetch(sqlite3_file* f, sqlite3_int64 offset, void* p) {
  return Of(f)->Real()->pMethods->xUnfetch(Of(f)->Real(), offset, p);
}

const sqlite3_io_methods kMethods = {
    3,
    Close,
    Read,
    Write,
    Truncate,
    Sync,
    FileSize,
    Lock,
    Unlock,
    CheckReservedLock,
    FileControl,
    SectorSize,
    DeviceCharacteristics,
    ShmMap,
    ShmLock,
    ShmBarrier,
    ShmUnmap,
    Fetch,
    Unfetch,
};

int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  File* file = Of(f);
  file->name = name;
  file->base.pMethods = nullptr;
  int rc = g_base->xOpen(g_base, name, file->Real(), flags, out_flags);
  // SQLite calls xClose only when pMethods is set; the base sets its own
  // only when the open worked far enough to need closing.
  if (file->Real()->pMethods != nullptr) file->base.pMethods = &kMethods;
  return rc;
}

}  // namespace

std::string DescribeKillAt(KillAt at) {
  return fmt::format("{} I/O #{}", at.after ? "after" : "before", at.io);
}

void KillingVfs::Install() {
  if (g_base != nullptr) return;
  g_base = sqlite3_vfs_find(nullptr);
  g_vfs = *g_base;
  g_vfs.zName = "ralph-killing-vfs";
  g_vfs.szOsFile = static_cast<int>(sizeof(File)) + g_base->szOsFile;
  g_vfs.xOpen = Open;
  g_vfs.pNext = nullptr;
  sqlite3_vfs_register(&g_vfs, 1);
}

void KillingVfs::Arm(KillAt at, std::string report_path) {
  g_at = at;
  g_report_path = std::move(report_path);
  g_count = 0;
}

int64_t KillingVfs::Count() {
  return g_count;
}

}  // namespace ralph::audit::testing
