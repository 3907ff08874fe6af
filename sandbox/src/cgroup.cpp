// cgroup v1 and v2 job cgroups (see cgroup.h).
#include "sandbox/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <optional>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "fs_util.h"
#include "platform/unique_fd.h"

namespace ralph::sandbox {
namespace {

// rmdir that tolerates tasks still leaving: a cgroup is busy until its last
// task is fully released, which can trail the reaping of the job's PID 1 by
// a little. Bounded at ~2 s.
Result<void> RemoveCgroupDir(const std::string& path) {
  for (int attempt = 0;; ++attempt) {
    if (::rmdir(path.c_str()) == 0 || errno == ENOENT) return {};
    if (errno != EBUSY || attempt >= 2000)
      return Error::FromErrno(fmt::format("rmdir {}", path), errno);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Result<void> ApplySettings(const std::vector<CgroupSetting>& settings,
                           const std::string& dir_for_v2,
                           const std::vector<std::pair<std::string, std::string>>& v1_dirs) {
  for (const CgroupSetting& setting : settings) {
    std::string dir = dir_for_v2;
    if (!setting.controller.empty()) {
      dir.clear();
      for (const auto& [controller, path] : v1_dirs) {
        if (controller == setting.controller) dir = path;
      }
      if (dir.empty()) {
        if (!setting.required) continue;
        return Error::Make(
            ErrorCode::kUnsupported,
            fmt::format("cgroup controller {} is not available", setting.controller));
      }
    }
    std::string path = dir + "/" + setting.file;
    if (!setting.required && !PathExists(path)) continue;
    TRY_CTX(WriteFileString(path, setting.value), fmt::format("setting {}", setting.file));
  }
  return {};
}

uint64_t ParseKey(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string name;
  uint64_t value;
  while (in >> name >> value) {
    if (name == key) return value;
  }
  return 0;
}

uint64_t ReadNumber(const std::string& path) {
  auto text = ReadFileString(path);
  if (!text) return 0;
  return std::strtoull(text->c_str(), nullptr, 10);
}

// ---- v2 ----

class JobCgroupV2 final : public JobCgroupInterface {
 public:
  JobCgroupV2(std::string path, UniqueFd dir) : path_(std::move(path)), dir_(std::move(dir)) {}
  ~JobCgroupV2() override { IgnoreError(Destroy()); }

  int clone_into_fd() const override { return dir_.get(); }
  Result<void> Attach(pid_t pid) override {
    return WriteFileString(path_ + "/cgroup.procs", std::to_string(pid));
  }
  Result<void> KillAll() override {
    // cgroup.kill (kernel >= 5.14) kills every task, including ones forking.
    return WriteFileString(path_ + "/cgroup.kill", "1");
  }
  Result<CgroupUsage> Usage() const override {
    CgroupUsage usage;
    usage.memory_peak_bytes = ReadNumber(path_ + "/memory.peak");
    if (auto stat = ReadFileString(path_ + "/cpu.stat"))
      usage.cpu_usage_ns = ParseKey(*stat, "usage_usec") * 1000;
    if (auto events = ReadFileString(path_ + "/memory.events"))
      usage.oom_kills = ParseKey(*events, "oom_kill");
    return usage;
  }
  Result<void> Destroy() override {
    if (destroyed_) return {};
    dir_.reset();
    TRY(RemoveCgroupDir(path_));
    destroyed_ = true;
    return {};
  }
  std::vector<std::string> paths() const override { return {path_}; }

 private:
  std::string path_;
  UniqueFd dir_;
  bool destroyed_ = false;
};

class CgroupManagerV2 final : public CgroupManagerInterface {
 public:
  explicit CgroupManagerV2(std::string parent) : parent_(std::move(parent)) {}
  ~CgroupManagerV2() override { IgnoreError(RemoveCgroupDir(parent_)); }
  CgroupVersion version() const override { return CgroupVersion::kV2; }
  Result<std::unique_ptr<JobCgroupInterface>> CreateJob(
      const std::string& name, const std::vector<CgroupSetting>& settings) override {
    std::string path = parent_ + "/" + name;
    if (::mkdir(path.c_str(), 0755) != 0)
      return Error::FromErrno(fmt::format("mkdir {}", path), errno);
    UniqueFd dir(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir) {
      int err = errno;
      ::rmdir(path.c_str());
      return Error::FromErrno(fmt::format("open {}", path), err);
    }
    auto job = std::make_unique<JobCgroupV2>(path, std::move(dir));
    // Settings whose controller is not enabled here (a host where v2 has no
    // controllers) fail to open: required settings then fail the job.
    TRY_CTX(ApplySettings(settings, path, {}), fmt::format("cgroup {}", path));
    return std::unique_ptr<JobCgroupInterface>(std::move(job));
  }
  std::vector<std::string> parent_paths() const override { return {parent_}; }

 private:
  std::string parent_;
};

// ---- v1 ----

class JobCgroupV1 final : public JobCgroupInterface {
 public:
  JobCgroupV1() = default;
  ~JobCgroupV1() override { IgnoreError(Destroy()); }
  void Add(std::string controller, std::string path) {
    dirs_.emplace_back(std::move(controller), std::move(path));
  }
  const std::vector<std::pair<std::string, std::string>>& dirs() const { return dirs_; }

  int clone_into_fd() const override { return -1; }
  Result<void> Attach(pid_t pid) override {
    for (const auto& [controller, path] : dirs_)
      TRY_CTX(WriteFileString(path + "/cgroup.procs", std::to_string(pid)),
              fmt::format("attaching to {}", controller));
    return {};
  }
  Result<void> KillAll() override {
    // v1 has no cgroup.kill: SIGKILL every listed task until none is left. A
    // task forking meanwhile is caught on the next pass (pids.max bounds it).
    // A killed task stays listed until it has run its exit, which on a
    // loaded machine can take a while: up to ~2 s of passes.
    std::string procs = Dir("pids") + "/cgroup.procs";
    for (int pass = 0; pass < 2000; ++pass) {
      auto text = TRY(ReadFileString(procs));
      std::istringstream in(text);
      pid_t pid;
      bool any = false;
      while (in >> pid) {
        any = true;
        ::kill(pid, SIGKILL);
      }
      if (!any) return {};
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return Error::Make(ErrorCode::kTimeout,
                       fmt::format("tasks left in {} after 2000 kill passes", procs));
  }
  Result<CgroupUsage> Usage() const override {
    CgroupUsage usage;
    usage.memory_peak_bytes = ReadNumber(Dir("memory") + "/memory.max_usage_in_bytes");
    usage.cpu_usage_ns = ReadNumber(Dir("cpuacct") + "/cpuacct.usage");
    if (auto oom = ReadFileString(Dir("memory") + "/memory.oom_control"))
      usage.oom_kills = ParseKey(*oom, "oom_kill");
    return usage;
  }
  Result<void> Destroy() override {
    Result<void> first;
    while (!dirs_.empty()) {
      auto result = RemoveCgroupDir(dirs_.back().second);
      if (!result && first) first = std::move(result);
      dirs_.pop_back();
    }
    return first;
  }
  std::vector<std::string> paths() const override {
    std::vector<std::string> out;
    for (const auto& entry : dirs_) out.push_back(entry.second);
    return out;
  }

 private:
  std::string Dir(const std::string& controller) const {
    for (const auto& [name, path] : dirs_) {
      if (name == controller) return path;
    }
    return "/nonexistent";
  }
  std::vector<std::pair<std::string, std::string>> dirs_;
};

class CgroupManagerV1 final : public CgroupManagerInterface {
 public:
  CgroupManagerV1() = default;
  void AddParent(std::string controller, std::string path) {
    parents_.emplace_back(std::move(controller), std::move(path));
  }
  ~CgroupManagerV1() override {
    for (const auto& entry : parents_) IgnoreError(RemoveCgroupDir(entry.second));
  }
  CgroupVersion version() const override { return CgroupVersion::kV1; }
  Result<std::unique_ptr<JobCgroupInterface>> CreateJob(
      const std::string& name, const std::vector<CgroupSetting>& settings) override {
    // Owns each directory as soon as it exists, so failure paths remove
    // whatever was made.
    auto job = std::make_unique<JobCgroupV1>();
    for (const auto& [controller, parent] : parents_) {
      std::string path = parent + "/" + name;
      if (::mkdir(path.c_str(), 0755) != 0)
        return Error::FromErrno(fmt::format("mkdir {}", path), errno);
      job->Add(controller, path);
    }
    TRY_CTX(ApplySettings(settings, "", job->dirs()), fmt::format("cgroup {}", name));
    return std::unique_ptr<JobCgroupInterface>(std::move(job));
  }
  std::vector<std::string> parent_paths() const override {
    std::vector<std::string> out;
    for (const auto& entry : parents_) out.push_back(entry.second);
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>> parents_;
};

// The calling process's cgroup in the v1 hierarchy holding `controller`,
// from /proc/self/cgroup's `text` ("4:memory:/a/b").
Result<std::string> OwnV1Path(const std::string& text, const std::string& controller) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t first = line.find(':');
    size_t second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    std::istringstream list(controllers);
    std::string item;
    while (std::getline(list, item, ',')) {
      if (item == controller) return line.substr(second + 1);
    }
  }
  return Error::Make(ErrorCode::kNotFound,
                     fmt::format("no v1 hierarchy for {} in /proc/self/cgroup", controller));
}

bool IsFsType(const std::string& path, long magic) {
  struct statfs st;
  return ::statfs(path.c_str(), &st) == 0 && static_cast<long>(st.f_type) == magic;
}

}  // namespace

Result<std::unique_ptr<CgroupManagerInterface>> OpenCgroupV2(const std::string& mount,
                                                             const std::string& parent) {
  if (!IsFsType(mount, CGROUP2_SUPER_MAGIC))
    return Error::Make(ErrorCode::kUnsupported, fmt::format("{} is not a cgroup2 mount", mount));
  if (parent.empty() || parent.find("..") != std::string::npos)
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("cgroup parent '{}' is empty or has '..'", parent));
  std::string path = mount + "/" + parent;
  // A controller is available in a cgroup only when its parent's
  // cgroup.subtree_control enables it (Documentation/admin-guide/cgroup-v2.rst,
  // "Enabling and Disabling"), so every level from the mount down passes
  // memory/pids/cpu/io on: on the appliance nothing else has enabled them in
  // the root (found by the e2e_sandbox_limits test; on a systemd host they
  // already are, and enabling them again changes nothing). The root is
  // exempt from the no-internal-processes rule; the levels below hold none.
  auto enable_controllers = [](const std::string& dir) -> Result<void> {
    auto available = ReadFileString(dir + "/cgroup.controllers");
    if (!available) return {};
    std::istringstream in(*available);
    std::string controller, enable;
    while (in >> controller) {
      if (controller == "memory" || controller == "pids" || controller == "cpu" ||
          controller == "io")
        enable += (enable.empty() ? "+" : " +") + controller;
    }
    if (enable.empty()) return {};
    TRY_CTX(WriteFileString(dir + "/cgroup.subtree_control", enable),
            fmt::format("enabling controllers in {}", dir));
    return {};
  };
  TRY(enable_controllers(mount));
  for (size_t slash = parent.find('/'); slash != std::string::npos;
       slash = parent.find('/', slash + 1)) {
    std::string level = mount + "/" + parent.substr(0, slash);
    TRY(MakeDirs(level, 0755));
    TRY(enable_controllers(level));
  }
  TRY(MakeDirs(path, 0755));
  auto manager = std::make_unique<CgroupManagerV2>(path);
  TRY(enable_controllers(path));
  return std::unique_ptr<CgroupManagerInterface>(std::move(manager));
}

Result<std::unique_ptr<CgroupManagerInterface>> OpenCgroupV1(const std::string& root,
                                                             const std::string& parent) {
  if (parent.empty() || parent.find("..") != std::string::npos)
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("cgroup parent '{}' is empty or has '..'", parent));
  // Constructed first so that a failure removes the parents made so far.
  auto manager = std::make_unique<CgroupManagerV1>();
  std::string own_cgroups = TRY(ReadFileString("/proc/self/cgroup"));
  for (const char* controller : {"memory", "pids", "cpu", "cpuacct", "blkio"}) {
    std::string hierarchy = root + "/" + controller;
    bool optional = std::string(controller) == "blkio";
    if (!IsFsType(hierarchy, CGROUP_SUPER_MAGIC)) {
      if (optional) continue;
      return Error::Make(ErrorCode::kUnsupported,
                         fmt::format("{} is not a cgroup v1 hierarchy", hierarchy));
    }
    auto own = OwnV1Path(own_cgroups, controller);
    if (!own) {
      if (optional) continue;
      return std::move(own).error();
    }
    std::string path = hierarchy + (*own == "/" ? "" : *own) + "/" + parent;
    // Our own cgroup exists: one mkdir unless the parent name is nested.
    if (parent.find('/') != std::string::npos || ::mkdir(path.c_str(), 0755) != 0)
      TRY(MakeDirs(path, 0755));
    manager->AddParent(controller, path);
  }
  return std::unique_ptr<CgroupManagerInterface>(std::move(manager));
}

Result<std::unique_ptr<CgroupManagerInterface>> DetectCgroups(const std::string& parent) {
  const std::string root = "/sys/fs/cgroup";
  if (IsFsType(root, CGROUP2_SUPER_MAGIC)) {
    auto controllers = TRY(ReadFileString(root + "/cgroup.controllers"));
    for (const char* needed : {"memory", "pids", "cpu"}) {
      if (controllers.find(needed) == std::string::npos)
        return Error::Make(ErrorCode::kUnsupported,
                           fmt::format("cgroup2 at {} lacks the {} controller", root, needed));
    }
    return OpenCgroupV2(root, parent);
  }
  if (IsFsType(root + "/memory", CGROUP_SUPER_MAGIC)) return OpenCgroupV1(root, parent);
  return Error::Make(
      ErrorCode::kUnsupported,
      fmt::format("neither cgroup2 nor cgroup v1 memory/pids/cpu hierarchies at {}", root));
}

std::string OwnedCgroupName(const std::string& base) {
  pid_t pid = ::getpid();
  return fmt::format("{}@{}.{}", base, pid, ProcessStartTime(pid));
}

namespace {

struct CgroupOwner {
  std::string base;
  pid_t pid = 0;
  uint64_t start = 0;
};

std::optional<CgroupOwner> ParseOwnedName(const std::string& name) {
  size_t at = name.rfind('@');
  if (at == std::string::npos || at == 0) return std::nullopt;
  CgroupOwner owner;
  owner.base = name.substr(0, at);
  unsigned long long start = 0;
  int pid = 0;
  char rest = 0;
  if (std::sscanf(name.c_str() + at + 1, "%d.%llu%c", &pid, &start, &rest) != 2 || pid <= 0)
    return std::nullopt;
  owner.pid = pid;
  owner.start = start;
  return owner;
}

// SIGKILLs what is left in `dir` (bounded) and removes it.
Result<void> KillAndRemove(const std::string& dir) {
  for (int pass = 0; pass < 200; ++pass) {
    auto text = ReadFileString(dir + "/cgroup.procs");
    if (!text) break;  // gone already
    std::istringstream in(*text);
    pid_t pid;
    bool any = false;
    while (in >> pid) {
      any = true;
      ::kill(pid, SIGKILL);
    }
    if (!any) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return RemoveCgroupDir(dir);
}

}  // namespace

Result<size_t> SweepDeadOwnerCgroups(const CgroupManagerInterface& manager) {
  size_t removed = 0;
  Result<void> first;
  for (const std::string& parent : manager.parent_paths()) {
    size_t slash = parent.rfind('/');
    if (slash == std::string::npos) continue;
    std::string dir = parent.substr(0, slash);
    auto own = ParseOwnedName(parent.substr(slash + 1));
    if (!own) continue;
    DIR* listing = ::opendir(dir.c_str());
    if (!listing) continue;
    std::vector<std::string> dead;
    while (dirent* entry = ::readdir(listing)) {
      auto owner = ParseOwnedName(entry->d_name);
      if (!owner || owner->base != own->base || entry->d_type != DT_DIR) continue;
      // Gone, or its pid now names a later process. (A name without a start
      // time, its owner unable to read its own, counts only when gone.)
      uint64_t start = ProcessStartTime(owner->pid);
      if (start == 0 || (owner->start != 0 && start != owner->start)) dead.push_back(entry->d_name);
    }
    ::closedir(listing);
    for (const std::string& name : dead) {
      std::string path = dir + "/" + name;
      if (DIR* jobs = ::opendir(path.c_str())) {
        std::vector<std::string> children;
        while (dirent* entry = ::readdir(jobs)) {
          std::string child = entry->d_name;
          if (entry->d_type == DT_DIR && child != "." && child != "..") children.push_back(child);
        }
        ::closedir(jobs);
        for (const std::string& child : children) {
          auto r = KillAndRemove(path + "/" + child);
          if (!r && first) first = std::move(r);
        }
      }
      auto r = KillAndRemove(path);
      if (!r) {
        if (first) first = std::move(r);
        continue;
      }
      ++removed;
    }
  }
  if (!first) return std::move(first).error().WithContext("sweeping cgroups of dead owners");
  return removed;
}

}  // namespace ralph::sandbox
