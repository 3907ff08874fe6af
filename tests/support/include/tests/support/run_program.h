// Runs a host program for a test and hands back its exit status and its
// output (stdout + stderr combined, or apart), whatever happened, so a test
// can check both the status and the message of a refusal.
//
//   ProgramRun run = RunProgram({"ralph-bundle", "info", bundle});
//   EXPECT_EQ(run.exit, 1) << run.output;
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace ralph::testing {

struct ProgramRun {
  // The exit status; 128 + signal when killed; 127 when argv[0] could not
  // be run; -1 when no process could be started (output says why).
  int exit = -1;
  std::string output;
};

// argv[0] is looked up in PATH when it has no slash.
ProgramRun RunProgram(const std::vector<std::string>& argv);

// The same with stdout and stderr kept apart, for tests that parse one
// (JSON, a table) and check the message in the other.
struct ProgramStreams {
  int exit = -1;  // as ProgramRun::exit; err says why when -1
  std::string out;
  std::string err;
};

// `env` changes the child's environment: "NAME=value" sets, "NAME" unsets.
ProgramStreams RunProgramStreams(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env = {});

// Starts `argv` (argv[0] a path) in the background with stdin and stdout on
// /dev/null (stderr stays the test's), SIGKILLed if the calling thread ends
// first; for a test that kills a program mid-run. The pid, or -1 when fork
// failed; the caller reaps it.
pid_t StartProgram(const std::vector<std::string>& argv);

// Whether the unix socket at `path` accepts a connection now.
bool SocketAccepts(const std::string& path);

// StartProgram of a daemon that serves the unix socket `socket` (ralphd),
// then a wait on state until the socket accepts a connection (a socket file
// left at that path is removed first). The pid; -1
// with `why` set when the daemon exited first (its status) or never served
// (then it is killed); either way it is reaped.
pid_t StartServing(const std::vector<std::string>& argv, const std::string& socket,
                   std::string* why);

}  // namespace ralph::testing
