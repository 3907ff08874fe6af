// Shared set-up for the sandbox integration tests: a base rootfs like the
// one agents get (merged-/usr symlinks; the host's /usr bound read-only), a
// state directory, the escape probe bound on /probe, and a SandboxService on
// whatever cgroup version the host offers. Every name carries the test's pid.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "platform/arch.h"
#include "sandbox/service.h"

namespace ralph::sandbox::testing {

class SandboxFixture : public ::testing::Test {
 public:
  static void WriteHostFile(const std::string& path, const std::string& content) {
    std::ofstream out(path);
    out << content;
  }
  static std::string ReadHostFile(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "the sandbox integration tests need root";
    ASSERT_EQ(::access("/usr/sbin/mkfs.ext4", X_OK), 0) << "mkfs.ext4 missing (package e2fsprogs)";
    work_ = fmt::format("/tmp/ralph-sandbox-test-{}-{}", ::getpid(), counter_++);
    base_ = work_ + "/base";
    host_ = work_ + "/host";
    for (const std::string& dir :
         {work_, base_, base_ + "/usr", base_ + "/etc", host_, host_ + "/shared"})
      ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir;
    // Shared read-write with jobs: owned by the jobs' mapped root.
    ASSERT_EQ(::chown((host_ + "/shared").c_str(), ids_.host_base, ids_.host_base), 0);
    for (const char* link : {"bin", "lib", "lib64", "sbin"})
      ASSERT_EQ(::symlink(fmt::format("usr/{}", link).c_str(), (base_ + "/" + link).c_str()), 0);
    WriteHostFile(base_ + "/base-file", "base\n");
    WriteHostFile(host_ + "/secret", "host secret\n");
    CreateService();
  }

  // (Re)creates service_ (state dir, cgroup parent and name of this test).
  void CreateService() {
    auto service = MakeService("");
    ASSERT_TRUE(service) << service.error().ToString();
    service_ = std::move(*service);
  }
  // A service of this test; a non-empty `suffix` makes another one beside
  // service_ (its own state dir, cgroup parent and job names).
  Result<std::unique_ptr<SandboxService>> MakeService(const std::string& suffix) {
    return MakeServiceIn(work_ + "/state" + suffix, suffix);
  }
  // A service on `state_dir` (which other services may share) named after
  // `tag`, with `adjust` applied to its options.
  Result<std::unique_ptr<SandboxService>> MakeServiceIn(
      const std::string& state_dir, const std::string& tag,
      const std::function<void(ServiceOptions&)>& adjust = {}) {
    std::string cgroup_parent = fmt::format("ralph-test-{}-{}{}", ::getpid(), counter_, tag);
    std::unique_ptr<CgroupManagerInterface> cgroups = TRY(DetectCgroups(cgroup_parent));
    ServiceOptions options;
    options.state_dir = state_dir;
    options.name = fmt::format("t{}{}", ::getpid(), tag);
    options.ids = ids_;
    options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
    if (adjust) adjust(options);
    return SandboxService::Create(options, std::move(cgroups), nullptr);
  }

  void TearDown() override {
    service_.reset();
    std::string command = "rm -rf " + work_;
    ASSERT_EQ(std::system(command.c_str()), 0);
  }

  SandboxSpec Spec(std::vector<std::string> argv) const {
    SandboxSpec spec;
    spec.base = base_;
    spec.binds = {{"/usr", "/usr", BindAccess::kReadOnly},
                  {RALPH_SANDBOX_PROBE_DIR, "/probe", BindAccess::kReadOnly}};
    spec.argv = std::move(argv);
    spec.env = {"PATH=/usr/bin:/bin"};
    spec.network.enabled = false;
    return spec;
  }
  SandboxSpec Probe(std::vector<std::string> args) const {
    args.insert(args.begin(), "/probe/sandbox_probe");
    return Spec(std::move(args));
  }

  // Create + Run + Wait + Destroy; the result, or a failed assertion.
  JobResult RunJob(const SandboxSpec& spec) {
    auto id = service_->CreateJob(spec);
    if (!id) {
      ADD_FAILURE() << id.error().ToString();
      return {};
    }
    auto run = service_->Run(*id);
    if (!run) ADD_FAILURE() << run.error().ToString();
    JobResult result;
    if (run) {
      auto waited = service_->Wait(*id);
      if (waited) {
        result = std::move(*waited);
      } else {
        ADD_FAILURE() << waited.error().ToString();
      }
    }
    auto destroyed = service_->Destroy(*id);
    if (!destroyed) ADD_FAILURE() << destroyed.error().ToString();
    return result;
  }

  std::string work_, base_, host_;
  // A host uid range of this test process's own, so that counting the
  // processes of the range is not disturbed by other tests' sandboxes.
  IdMapping ids_{(1u << 24) + (static_cast<uint32_t>(::getpid()) % 4096u) * 65536u, 65536};
  std::unique_ptr<SandboxService> service_;
  static inline int counter_ = 0;
};

inline std::string Describe(const JobResult& result) {
  return fmt::format("{} exit={} signal={} stdout='{}' stderr='{}'",
                     TerminationName(result.termination), result.exit_code, result.signal,
                     result.stdout_data, result.stderr_data);
}

}  // namespace ralph::sandbox::testing
