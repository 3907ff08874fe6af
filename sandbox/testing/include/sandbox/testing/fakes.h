// Fakes for SandboxService's dependencies, with failure injection: a cgroup
// manager that records what it was asked (and can fail creation or a
// setting), and a network provider that fails or hands out a fake network.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/cgroup.h"
#include "sandbox/service.h"

namespace ralph::sandbox::testing {

class FakeCgroupManager final : public CgroupManagerInterface {
 public:
  struct Record {
    std::string name;
    std::vector<CgroupSetting> settings;
    std::vector<pid_t> attached;
    bool killed = false;
    bool destroyed = false;
  };

  explicit FakeCgroupManager(CgroupVersion version = CgroupVersion::kV1) : version_(version) {}
  CgroupVersion version() const override { return version_; }
  Result<std::unique_ptr<JobCgroupInterface>> CreateJob(
      const std::string& name, const std::vector<CgroupSetting>& settings) override;
  std::vector<std::string> parent_paths() const override { return {}; }

  // The next CreateJob fails with this error.
  void FailNextCreate(Error error) { fail_create_ = std::move(error); }
  // Shared so a test can inspect records after handing the manager over.
  std::shared_ptr<std::vector<Record>> records() const { return records_; }

 private:
  CgroupVersion version_;
  std::optional<Error> fail_create_;
  std::shared_ptr<std::vector<Record>> records_ = std::make_shared<std::vector<Record>>();
};

class FakeNetworkProvider final : public NetworkProviderInterface {
 public:
  Result<std::unique_ptr<JobNetwork>> Create(const std::string& job_id, pid_t child_pid,
                                             const NetworkSpec& spec) override;
  // Every Create fails with this error (when set).
  void FailWith(Error error) { fail_ = std::move(error); }
  // Count of networks created and torn down so far.
  std::shared_ptr<int> created() const { return created_; }
  std::shared_ptr<int> torn_down() const { return torn_down_; }
  // Of those, the ones torn down with TeardownWithNamespace().
  std::shared_ptr<int> torn_down_with_namespace() const { return with_namespace_; }

 private:
  std::optional<Error> fail_;
  std::shared_ptr<int> created_ = std::make_shared<int>(0);
  std::shared_ptr<int> torn_down_ = std::make_shared<int>(0);
  std::shared_ptr<int> with_namespace_ = std::make_shared<int>(0);
};

}  // namespace ralph::sandbox::testing
