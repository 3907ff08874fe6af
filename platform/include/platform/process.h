// Running other programs: the one way the tree starts a host tool (mkfs,
// e2fsck, mtools, objcopy, ...) or a service. An argument vector, never a
// shell; stdin is /dev/null; the child starts with an empty signal mask and
// default signal dispositions whatever the caller blocks or ignores (PID 1
// blocks the signals it reads through a signalfd); no fd of the caller
// leaks into it (every fd of the tree is O_CLOEXEC).
//
//   ProgramExit run = TRY(RunProgram({.argv = {"mke2fs", "-q", image}}));
//   if (!run.ok()) ...run.Describe()...
//   std::string out = TRY(RunProgramChecked({.argv = {"dpkg-deb", "-f", deb}}));
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph {

// Where the child's stdout and stderr go.
enum class ProgramOutput {
  kCapture,  // pipes: stdout to ProgramExit::out (or on_stdout), stderr to ::err
  kInherit,  // the caller's stdout and stderr (early boot: the console)
  kFile,     // both to `output_file`, opened write-only without becoming the
             // controlling terminal (services: /dev/console)
};

// The child's environment: the caller's plus `env`, or `env` alone.
enum class ProgramEnvironment { kInheritPlus, kOnly };

struct ProgramCommand {
  // argv[0] is looked up in PATH when it has no slash.
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value"
  ProgramEnvironment environment = ProgramEnvironment::kInheritPlus;
  std::string cwd;  // empty: the caller's
  ProgramOutput output = ProgramOutput::kCapture;
  std::string output_file;  // with kFile
  // With kCapture: stdout is handed here as it arrives instead of being
  // collected; an error stops the delivery (the program still runs to its
  // end) and is RunProgram's result.
  std::function<Result<void>(std::span<const uint8_t>)> on_stdout;
  // The Debian package that ships argv[0], named when it is missing.
  std::string package;
};

struct ProgramExit {
  int exit_status = 0;  // when the program exited
  int signal = 0;       // non-zero when a signal killed it
  std::string out;      // kCapture without on_stdout
  std::string err;      // kCapture: the last 64 KiB of stderr
  bool ok() const { return signal == 0 && exit_status == 0; }
  // "exit status 3" or "killed by signal 9".
  std::string Describe() const;
};

// Runs the program to its end. Its failure is not an error here: the exit
// status or signal is in ProgramExit. Errors: kNotFound when argv[0] does
// not exist ("mcopy: not found (Debian package mtools)"), kInvalidArgument
// for an empty argv, kIo (errno) when it could not be started or read.
Result<ProgramExit> RunProgram(const ProgramCommand& command);

// RunProgram that also requires success: kIo "`mksquashfs a b` failed (exit
// status 1): <end of stderr>" otherwise. Returns stdout.
Result<std::string> RunProgramChecked(const ProgramCommand& command);

// Starts the program in a new session (setsid) and returns its pid at once;
// the caller reaps it. kCapture is not available here (kInvalidArgument).
Result<pid_t> StartProgram(const ProgramCommand& command);

}  // namespace ralph
