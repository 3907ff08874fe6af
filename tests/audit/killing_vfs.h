// A SQLite VFS for fault injection: it wraps the default VFS, numbers every
// call that changes a file (xWrite, xTruncate, xSync; 1, 2, ...) and can
// SIGKILL the process just before or just after one of them, so a crash
// test kills SQLite at a chosen write instead of at a moment picked by a
// timer. Writes through the WAL index's shared memory are not calls and not
// counted.
//
//   KillingVfs::Install();         // the default VFS from now on
//   ... open the database ...
//   KillingVfs::Arm({.io = 7, .after = false}, "/tmp/x/killed-at");
//   ... appends: the process dies just before its 7th file change ...
#pragma once

#include <cstdint>
#include <string>

namespace ralph::audit::testing {

struct KillAt {
  int64_t io = 0;      // the n-th file change counted from Arm(); 0: never
  bool after = false;  // once the call returned rather than before it
};

class KillingVfs {
 public:
  // Registers the wrapper as SQLite's default VFS (once per process).
  static void Install();
  // Starts counting from zero and kills at `at`, after writing to
  // `report_path` the point ("before I/O #7") and, on the next line, what the
  // call was ("write audit.db-wal 4152 bytes at 32").
  static void Arm(KillAt at, std::string report_path);
  // File changes counted since Arm().
  static int64_t Count();
};

// "before I/O #7" / "after I/O #7": the first line KillingVfs reports.
std::string DescribeKillAt(KillAt at);

}  // namespace ralph::audit::testing
