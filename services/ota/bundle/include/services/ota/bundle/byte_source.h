// Where bundle bytes come from: the interface every bundle reader takes, and
// the local-file source. The HTTPS source (libcurl) is services/ota's
// (services/ota/source.h).
//
// A source is read mostly sequentially (header, manifest, signature, then
// each payload front to back); ReadAt at the current position continues the
// open stream, any other offset repositions (a new Range request for HTTPS).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::ota {

class ByteSourceInterface {
 public:
  virtual ~ByteSourceInterface() = default;
  // Total size in bytes.
  virtual uint64_t Size() const = 0;
  // Fills `out` entirely with the bytes at `offset`. kInvalidArgument when the
  // range ends past Size(), kIo/kNetwork on failure, kCancelled when cancelled.
  virtual Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) = 0;
  // "file /path" or "https://host/x.rbundle", for messages.
  virtual std::string Describe() const = 0;
};

class FileSource final : public ByteSourceInterface {
 public:
  static Result<std::unique_ptr<FileSource>> Open(const std::string& path);
  uint64_t Size() const override { return size_; }
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  std::string Describe() const override { return "file " + path_; }

 private:
  FileSource(UniqueFd fd, std::string path, uint64_t size)
      : fd_(std::move(fd)), path_(std::move(path)), size_(size) {}
  UniqueFd fd_;
  std::string path_;
  uint64_t size_;
};

}  // namespace ralph::ota
