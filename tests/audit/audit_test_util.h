// Helpers shared by the audit log tests: a temp directory and running a
// program (the sqlite3 shell, ralphctl) with its output captured.
#pragma once

#include "drivers/testing/temp_dir.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ralph::audit::testing {

// A fresh temp directory (ralph-audit-XXXXXX), removed on destruction.
class TempDir : public ::ralph::testing::TempDir {
 public:
  TempDir() : ::ralph::testing::TempDir("ralph-audit") {}
};

struct ProgramRun {
  int status = -1;  // exit code, or 128 + signal
  std::string out;
  std::string err;
};

inline std::string ReadFileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs `argv` (argv[0] looked up in PATH) with stdout/stderr in files under
// `scratch`; status -1 when it could not be started.
inline ProgramRun Run(const std::vector<std::string>& argv, const std::string& scratch) {
  std::string out_path = scratch + "/run.out";
  std::string err_path = scratch + "/run.err";
  pid_t pid = ::fork();
  if (pid == 0) {
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0 || err < 0) ::_exit(126);
    ::dup2(out, STDOUT_FILENO);
    ::dup2(err, STDERR_FILENO);
    std::vector<char*> args;
    // execvp does not write through argv; the const_cast is for its C type.
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ProgramRun run;
  if (pid < 0) return run;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.out = ReadFileText(out_path);
  run.err = ReadFileText(err_path);
  return run;
}

// The sqlite3 shell on `db` (Debian package sqlite3; scripts/setup.sh).
inline ProgramRun Sqlite(const std::string& db, const std::string& sql,
                         const std::string& scratch) {
  return Run({"sqlite3", "-batch", db, sql}, scratch);
}

}  // namespace ralph::audit::testing
