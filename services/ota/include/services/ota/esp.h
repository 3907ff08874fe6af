// Writing a slot's unified kernel image to the EFI system partition.
//
// Choice: mtools on the ESP partition itself (its block device, or
// "disk.img@@<byte offset>" for an image file), never a mount. The appliance
// keeps everything outside VAR read-only at run time,
// the image builder already writes the ESP with mtools, and it works the same
// on a device, a loop partition and a plain image. The ESP must not be
// mounted read-write by anyone else while this runs.
//
// Crash safety does not rest on FAT: the file written is the image of the
// slot being installed, which is in state `writing` and outside BootOrder and
// BootNext until FinishWrite, so a torn \EFI\ralph\b.efi is never booted and
// a rerun overwrites it.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "platform/result.h"
#include "platform/sha256.h"

namespace ralph::ota {

class EspInterface {
 public:
  virtual ~EspInterface() = default;
  // Replaces `esp_path` ("EFI/ralph/b.efi", '/'-separated, directories made
  // as needed) with the contents of the local file `local_path`, then flushes
  // the ESP to stable storage.
  virtual Result<void> InstallFile(const std::string& local_path, std::string_view esp_path) = 0;
  // SHA-256 of a file on the ESP, read back through mtools (after
  // InstallFile's fsync; the page cache may serve it). kNotFound when absent.
  virtual Result<Sha256Digest> Digest(std::string_view esp_path) = 0;
};

class MtoolsEsp final : public EspInterface {
 public:
  // `device` is the ESP's block device or image file; `offset` its byte
  // offset inside `device` (0 for a partition device).
  static Result<std::unique_ptr<MtoolsEsp>> Open(const std::string& device, uint64_t offset);
  Result<void> InstallFile(const std::string& local_path, std::string_view esp_path) override;
  Result<Sha256Digest> Digest(std::string_view esp_path) override;

 private:
  MtoolsEsp(std::string device, uint64_t offset) : device_(std::move(device)), offset_(offset) {}
  std::string ImageSpec() const;
  std::string device_;
  uint64_t offset_;
};

// "EFI/ralph/a.efi" for slot letter 'a'.
std::string SlotImagePath(char slot_letter);

}  // namespace ralph::ota
