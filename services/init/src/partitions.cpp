#include "services/init/partitions.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::init {
namespace {

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};

}  // namespace

std::map<std::string, std::string> ParseUevent(std::string_view text) {
  std::map<std::string, std::string> values;
  std::istringstream lines{std::string(text)};
  for (std::string line; std::getline(lines, line);) {
    size_t eq = line.find('=');
    if (eq != std::string::npos) values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return values;
}

Result<std::map<std::string, std::string>> FindPartitionsByLabel(
    const std::string& sysfs_block_dir) {
  std::unique_ptr<DIR, DirCloser> dir(::opendir(sysfs_block_dir.c_str()));
  if (!dir) return Error::FromErrno(fmt::format("opendir {}", sysfs_block_dir), errno);
  std::set<std::string> names;
  while (dirent* entry = ::readdir(dir.get())) {
    if (entry->d_name[0] != '.') names.insert(entry->d_name);
  }
  std::map<std::string, std::string> by_label;
  for (const auto& name : names) {
    std::string path = fmt::format("{}/{}/uevent", sysfs_block_dir, name);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) continue;  // a device that vanished meanwhile
    char buffer[4096];
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer) - 1);
    if (n <= 0) continue;
    auto values = ParseUevent(std::string_view(buffer, static_cast<size_t>(n)));
    auto label = values.find("PARTNAME");
    auto devname = values.find("DEVNAME");
    if (label == values.end() || devname == values.end() || label->second.empty()) continue;
    by_label.emplace(label->second, "/dev/" + devname->second);
  }
  return by_label;
}

}  // namespace ralph::init
