#include "sandbox/testing/fakes.h"

namespace ralph::sandbox::testing {
namespace {

class FakeJobCgroup final : public JobCgroupInterface {
 public:
  FakeJobCgroup(std::shared_ptr<std::vector<FakeCgroupManager::Record>> records, size_t index)
      : records_(std::move(records)), index_(index) {}
  int clone_into_fd() const override { return -1; }
  Result<void> Attach(pid_t pid) override {
    (*records_)[index_].attached.push_back(pid);
    return {};
  }
  Result<void> KillAll() override {
    (*records_)[index_].killed = true;
    return {};
  }
  Result<CgroupUsage> Usage() const override { return CgroupUsage{}; }
  Result<void> Destroy() override {
    (*records_)[index_].destroyed = true;
    return {};
  }
  std::vector<std::string> paths() const override { return {}; }

 private:
  std::shared_ptr<std::vector<FakeCgroupManager::Record>> records_;
  size_t index_;
};

class FakeJobNetwork final : public JobNetwork {
 public:
  FakeJobNetwork(std::shared_ptr<int> torn_down, std::shared_ptr<int> with_namespace)
      : torn_down_(std::move(torn_down)), with_namespace_(std::move(with_namespace)) {}
  ~FakeJobNetwork() override { IgnoreError(Teardown()); }
  Result<void> Teardown() override {
    if (!done_) ++*torn_down_;
    done_ = true;
    return {};
  }
  Result<void> TeardownWithNamespace() override {
    if (!done_) ++*with_namespace_;
    return Teardown();
  }
  std::string resolver_address() const override { return "192.0.2.1"; }
  std::string resolver_address_v6() const override { return "2001:db8::1"; }

 private:
  std::shared_ptr<int> torn_down_;
  std::shared_ptr<int> with_namespace_;
  bool done_ = false;
};

}  // namespace

Result<std::unique_ptr<JobCgroupInterface>> FakeCgroupManager::CreateJob(
    const std::string& name, const std::vector<CgroupSetting>& settings) {
  if (fail_create_) {
    Error error = std::move(*fail_create_);
    fail_create_.reset();
    return error;
  }
  records_->push_back({name, settings, {}, false, false});
  return std::unique_ptr<JobCgroupInterface>(
      std::make_unique<FakeJobCgroup>(records_, records_->size() - 1));
}

Result<std::unique_ptr<JobNetwork>> FakeNetworkProvider::Create(const std::string&, pid_t,
                                                                const NetworkSpec&) {
  if (fail_) return *fail_;
  ++*created_;
  return std::unique_ptr<JobNetwork>(std::make_unique<FakeJobNetwork>(torn_down_, with_namespace_));
}

}  // namespace ralph::sandbox::testing
