// SandboxSpec: everything that describes one sandboxed job, as a plain struct
// (parsed from the job policy by ralphd later). Every limit has a bounded
// default; a policy may raise limits but never make them unlimited.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "platform/result.h"
#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

enum class BindAccess { kReadOnly, kReadWrite };

// One explicit bind mount from the host into the sandbox. Nothing of the host
// is visible inside except the base image and these.
struct BindMount {
  std::string source;       // absolute host path (file or directory)
  std::string destination;  // absolute path inside the sandbox
  BindAccess access = BindAccess::kReadOnly;
};

// What the base (lower, read-only) layer of the rootfs is.
enum class BaseKind {
  kDirectory,  // a host directory
  kImage,      // a squashfs or erofs image file, loop-mounted read-only once
};

struct Limits {
  uint64_t memory_bytes = 512ull << 20;   // memory.max; swap is always off
  uint32_t pids = 256;                    // pids.max (also bounds RLIMIT_NPROC)
  uint32_t cpu_millis = 1000;             // CPU bandwidth, 1000 = one full CPU
  uint32_t io_weight = 100;               // io.weight / blkio.weight, 1..10000
  uint64_t disk_bytes = 2ull << 30;       // size of the writable upper layer
  uint64_t tmp_bytes = 64ull << 20;       // size of the tmpfs on /tmp (RAM-charged)
  uint64_t open_files = 1024;             // RLIMIT_NOFILE
  uint64_t file_size_bytes = 1ull << 30;  // RLIMIT_FSIZE
};

enum class StdioMode {
  kPipes,  // stdout and stderr captured separately; stdin is /dev/null
  kPty,    // one pseudo-terminal for stdin/stdout/stderr (interactive CLIs)
};

// A terminal's window size (TIOCSWINSZ), what `stty size` shows inside.
inline constexpr uint16_t kMaxTerminalDimension = 10000;
struct TerminalSize {
  uint16_t columns = 80;
  uint16_t rows = 24;
};

struct SandboxSpec {
  // Rootfs: an overlay of `base` (read-only) and a per-job writable upper
  // layer on a filesystem of Limits::disk_bytes.
  BaseKind base_kind = BaseKind::kDirectory;
  std::string base;  // directory or image file (absolute)

  std::vector<BindMount> binds;

  // The job: argv[0] is looked up in PATH (from env, else a default) inside
  // the sandbox unless it contains a '/'.
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value"
  std::string cwd = "/work";
  // A directory created in the upper layer and owned by the job; the place
  // where results are written and later collected.
  std::string workspace = "/work";
  std::string hostname = "sandbox";

  Limits limits;
  NetworkSpec network;
  // 0 = no timeout. Otherwise the job is killed when it runs longer.
  std::chrono::milliseconds timeout{0};
  StdioMode stdio = StdioMode::kPipes;
  // kPty: the window size the job starts with (1..10000 each).
  TerminalSize terminal_size;

  // Every execve/execveat inside the job is reported to the service's
  // caller (ExecRecord, service.h): the job's processes stop at each exec
  // until the service has read the path and argv. Off by default (a
  // launcher has no one to report to); ralphd turns it on.
  bool record_exec = false;

  // Hardening layers; all on by default. Turning one off is for diagnosis.
  bool proc_subset_pid = true;  // /proc shows only processes (no /proc/sys, kcore...)
};

// Checks a spec before anything is created. kInvalidArgument names the field
// and what was wrong ("binds[2].destination: must be absolute").
Result<void> ValidateSpec(const SandboxSpec& spec);

}  // namespace ralph::sandbox
