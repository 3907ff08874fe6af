// A fresh directory under TMPDIR for a test, removed with its contents on
// destruction. path() is empty when it could not be made (the test's first
// use of it then fails with the path in the message).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace ralph::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "ralph-test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data())) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace ralph::testing
