// Helpers shared by the audit log tests: a temp directory, reading a file
// and the sqlite3 shell.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "tests/support/run_program.h"
#include "tests/support/temp_dir.h"

namespace ralph::audit::testing {

// A fresh temp directory (ralph-audit-XXXXXX), removed on destruction.
class TempDir : public ::ralph::testing::TempDir {
 public:
  TempDir() : ::ralph::testing::TempDir("ralph-audit") {}
};

using ::ralph::testing::ProgramStreams;

inline std::string ReadFileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The sqlite3 shell on `db` (Debian package sqlite3; scripts/setup.sh).
inline ProgramStreams Sqlite(const std::string& db, const std::string& sql) {
  return ::ralph::testing::RunProgramStreams({"sqlite3", "-batch", db, sql});
}

}  // namespace ralph::audit::testing
