// A reproducible initramfs archive (cpio "newc", the format the kernel
// unpacks; Documentation/driver-api/early-userspace/buffer-format.rst).
// Entries are written sorted by path, owned by root, with one fixed mtime,
// so the same inputs give the same bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::mkimage {

class CpioArchive {
 public:
  // Parent directories are added automatically (mode 0755).
  void AddDirectory(const std::string& path, uint32_t mode = 0755);
  void AddFile(const std::string& path, std::vector<uint8_t> content, uint32_t mode = 0644);
  void AddSymlink(const std::string& path, const std::string& target);
  void AddCharDevice(const std::string& path, uint32_t major, uint32_t minor, uint32_t mode);
  // Reads a host file into the archive at `path` (mode taken from the host
  // file's permission bits). kNotFound when the host file is absent.
  Result<void> AddHostFile(const std::string& path, const std::string& host_path);

  bool Contains(const std::string& path) const { return entries_.count(Normalize(path)) != 0; }

  // The whole archive, ending with the TRAILER!!! record.
  std::vector<uint8_t> Serialize(uint32_t mtime) const;

 private:
  struct Entry {
    uint32_t mode = 0;  // type bits + permissions
    std::vector<uint8_t> content;
    uint32_t rdev_major = 0;
    uint32_t rdev_minor = 0;
  };
  static std::string Normalize(const std::string& path);
  void AddParents(const std::string& path);

  std::map<std::string, Entry> entries_;  // sorted by path
};

}  // namespace ralph::mkimage
