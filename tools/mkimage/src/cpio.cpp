#include "tools/mkimage/cpio.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::mkimage {
namespace {

void AppendHeaderField(std::vector<uint8_t>& out, uint32_t value) {
  std::string hex = fmt::format("{:08X}", value);
  out.insert(out.end(), hex.begin(), hex.end());
}

void PadTo4(std::vector<uint8_t>& out) {
  while (out.size() % 4 != 0) out.push_back(0);
}

void AppendRecord(std::vector<uint8_t>& out, uint32_t ino, uint32_t mode, uint32_t nlink,
                  uint32_t mtime, const std::string& name, const std::vector<uint8_t>& content,
                  uint32_t rdev_major, uint32_t rdev_minor) {
  const std::string magic = "070701";
  out.insert(out.end(), magic.begin(), magic.end());
  AppendHeaderField(out, ino);
  AppendHeaderField(out, mode);
  AppendHeaderField(out, 0);  // uid
  AppendHeaderField(out, 0);  // gid
  AppendHeaderField(out, nlink);
  AppendHeaderField(out, mtime);
  AppendHeaderField(out, static_cast<uint32_t>(content.size()));
  AppendHeaderField(out, 0);  // devmajor
  AppendHeaderField(out, 0);  // devminor
  AppendHeaderField(out, rdev_major);
  AppendHeaderField(out, rdev_minor);
  AppendHeaderField(out, static_cast<uint32_t>(name.size() + 1));
  AppendHeaderField(out, 0);  // check (unused by newc)
  out.insert(out.end(), name.begin(), name.end());
  out.push_back(0);
  PadTo4(out);
  out.insert(out.end(), content.begin(), content.end());
  PadTo4(out);
}

}  // namespace

std::string CpioArchive::Normalize(const std::string& path) {
  std::string out = path;
  while (!out.empty() && out.front() == '/') out.erase(out.begin());
  while (!out.empty() && out.back() == '/') out.pop_back();
  return out;
}

void CpioArchive::AddParents(const std::string& path) {
  for (size_t slash = path.find('/'); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    std::string parent = path.substr(0, slash);
    if (!entries_.count(parent)) entries_[parent] = Entry{S_IFDIR | 0755, {}, 0, 0};
  }
}

void CpioArchive::AddDirectory(const std::string& path, uint32_t mode) {
  std::string name = Normalize(path);
  AddParents(name);
  entries_[name] = Entry{S_IFDIR | (mode & 07777), {}, 0, 0};
}

void CpioArchive::AddFile(const std::string& path, std::vector<uint8_t> content, uint32_t mode) {
  std::string name = Normalize(path);
  AddParents(name);
  entries_[name] = Entry{S_IFREG | (mode & 07777), std::move(content), 0, 0};
}

void CpioArchive::AddSymlink(const std::string& path, const std::string& target) {
  std::string name = Normalize(path);
  AddParents(name);
  entries_[name] = Entry{S_IFLNK | 0777, std::vector<uint8_t>(target.begin(), target.end()), 0, 0};
}

void CpioArchive::AddCharDevice(const std::string& path, uint32_t major, uint32_t minor,
                                uint32_t mode) {
  std::string name = Normalize(path);
  AddParents(name);
  entries_[name] = Entry{S_IFCHR | (mode & 07777), {}, major, minor};
}

Result<void> CpioArchive::AddHostFile(const std::string& path, const std::string& host_path) {
  UniqueFd fd(::open(host_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", host_path), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return Error::FromErrno(fmt::format("stat {}", host_path), errno);
  std::vector<uint8_t> content(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::read(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", host_path), errno);
    if (n == 0) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("read {}: file shrank while reading", host_path));
    }
    done += static_cast<size_t>(n);
  }
  AddFile(path, std::move(content), st.st_mode & 0755);
  return {};
}

std::vector<uint8_t> CpioArchive::Serialize(uint32_t mtime) const {
  std::vector<uint8_t> out;
  uint32_t ino = 1;
  for (const auto& [name, entry] : entries_) {
    uint32_t nlink = S_ISDIR(entry.mode) ? 2 : 1;
    AppendRecord(out, ino++, entry.mode, nlink, mtime, name, entry.content, entry.rdev_major,
                 entry.rdev_minor);
  }
  AppendRecord(out, 0, 0, 1, 0, "TRAILER!!!", {}, 0, 0);
  // The kernel reads the initrd in 512-byte blocks; pad like cpio(1) does.
  while (out.size() % 512 != 0) out.push_back(0);
  return out;
}

}  // namespace ralph::mkimage
