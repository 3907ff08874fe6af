// Whole-file reads and writes for small files (/proc entries, records under
// /run, config files, build inputs). Shared by every layer that needs them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph {

// The whole file. kNotFound when absent, kIo on a read error; the message
// names the path.
Result<std::string> ReadWholeFile(const std::string& path);
// Creates or truncates `path`, writes `content` (retrying short writes and
// EINTR) and leaves the file with exactly `mode`, whatever the umask.
Result<void> WriteWholeFile(const std::string& path, std::string_view content, mode_t mode = 0644);

// What a replacement must survive. Callers pick the weakest that their data
// needs: a file on a tmpfs (/run) or a build output gains nothing from a
// sync; state on VAR or the ESP that must survive a power cut needs the
// directory synced too, or the rename itself may be lost.
enum class Durability {
  kNone,                    // no sync: the old or the new content after a crash
  kFileSynced,              // the new content is on disk before the rename
  kFileAndDirectorySynced,  // and the rename is on disk when Commit returns
};

// Replaces `path` all at once: the content goes to a temporary file in the
// same directory, which Commit() renames over `path`. Until then `path`
// keeps its old content; a writer destroyed without Commit() (an error on the
// way) removes its temporary file. Temporary names hold the pid and a
// counter ("<path>.<pid>-<n>.tmp"), so concurrent writers never share one.
//
//   AtomicFile file = TRY(AtomicFile::Create(path, 0644));
//   TRY(WriteAll(file.fd(), bytes, file.temp_path()));  // or a tool writes temp_path()
//   TRY(file.Commit(Durability::kFileAndDirectorySynced));
class AtomicFile {
 public:
  static Result<AtomicFile> Create(const std::string& path, mode_t mode);

  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  ~AtomicFile();

  // Open for writing (O_CLOEXEC); valid until Commit.
  int fd() const { return fd_.get(); }
  const std::string& temp_path() const { return temp_path_; }
  const std::string& path() const { return path_; }

  // Syncs as `durability` asks, renames the temporary file over path() and,
  // for kFileAndDirectorySynced, syncs the directory. On an error the old
  // content stays and the temporary file is removed.
  Result<void> Commit(Durability durability);

 private:
  AtomicFile(std::string path, std::string temp_path, UniqueFd fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(std::move(fd)) {}

  std::string path_;
  std::string temp_path_;  // empty once committed or moved from
  UniqueFd fd_;
};

// Writes `content` to `path` through an AtomicFile: `path` has either its
// old content or exactly `content` with exactly `mode`, whatever fails.
Result<void> WriteFileAtomically(const std::string& path, std::string_view content, mode_t mode,
                                 Durability durability);

// Writes all of `data` to `fd` (retrying short writes and EINTR); `what`
// names the file in the error.
Result<void> WriteAll(int fd, std::span<const uint8_t> data, std::string_view what);
inline Result<void> WriteAll(int fd, std::string_view data, std::string_view what) {
  return WriteAll(fd, {reinterpret_cast<const uint8_t*>(data.data()), data.size()}, what);
}

}  // namespace ralph
