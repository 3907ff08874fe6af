// The pure parts of a VM job: the guest's view of a spec and the spec of
// QEMU's jail.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/vm/guest_paths.h"
#include "sandbox/vm/vm_job.h"

namespace ralph::sandbox::vm {
namespace {

using ::testing::HasSubstr;

SandboxSpec JobSpec() {
  SandboxSpec spec;
  spec.base_kind = BaseKind::kImage;
  spec.base = "/var/lib/ralph/agent.img";
  spec.argv = {"echo", "hi"};
  spec.network.enabled = false;
  spec.limits.memory_bytes = 300ull << 20;
  spec.limits.cpu_millis = 1500;
  spec.limits.disk_bytes = 2ull << 30;
  spec.record_exec = true;
  return spec;
}

TEST(GuestSpec, TheBaseBecomesTheGuestsDiskAndTheRestStays) {
  auto guest = GuestSpec(JobSpec());
  ASSERT_TRUE(guest) << guest.error().ToString();
  EXPECT_EQ(guest->base_kind, BaseKind::kDirectory);
  EXPECT_EQ(guest->base, kGuestBasePath);
  EXPECT_EQ(guest->argv, JobSpec().argv);
  EXPECT_EQ(guest->limits.memory_bytes, JobSpec().limits.memory_bytes);
  EXPECT_EQ(guest->limits.disk_bytes, JobSpec().limits.disk_bytes);
  EXPECT_FALSE(guest->record_exec);
}

TEST(GuestSpec, WhatAVmJobCannotHaveYetIsRefusedByName) {
  struct Case {
    void (*mutate)(SandboxSpec&);
    const char* field;
  };
  const Case cases[] = {
      {[](SandboxSpec& s) { s.base_kind = BaseKind::kDirectory; }, "base_kind:"},
      {[](SandboxSpec& s) {
         s.binds.push_back({"/srv", "/srv", BindAccess::kReadOnly});
       },
       "binds:"},
      {[](SandboxSpec& s) { s.network.enabled = true; }, "network.enabled:"},
  };
  for (const auto& c : cases) {
    SandboxSpec spec = JobSpec();
    c.mutate(spec);
    auto guest = GuestSpec(spec);
    ASSERT_FALSE(guest) << c.field;
    EXPECT_EQ(guest.error().code(), ErrorCode::kUnsupported);
    EXPECT_THAT(guest.error().ToString(), HasSubstr(c.field));
  }
  SandboxSpec bad = JobSpec();
  bad.argv.clear();
  auto guest = GuestSpec(bad);
  ASSERT_FALSE(guest);
  EXPECT_EQ(guest.error().code(), ErrorCode::kInvalidArgument);
}

TEST(VmmSpec, QemuSeesOnlyItsOwnFilesAndGetsTheGuestsMemory) {
  VmJobOptions options;
  options.guest_kernel = "/build/vmlinuz";
  options.guest_initrd = "/build/initrd.img";
  SandboxSpec job = JobSpec();
  SandboxSpec vmm = VmmSpec(job, options, {"/usr/bin/qemu-system-x86_64", "-m", "556M"},
                            "/run/ralphd/vm/vmm-root", "/run/ralphd/vm/vm-1-1");
  EXPECT_EQ(vmm.base_kind, BaseKind::kDirectory);
  EXPECT_EQ(vmm.base, "/run/ralphd/vm/vmm-root");
  EXPECT_EQ(vmm.argv[0], "/usr/bin/qemu-system-x86_64");
  EXPECT_FALSE(vmm.network.enabled);
  EXPECT_FALSE(vmm.record_exec);
  std::vector<std::string> writable;
  std::vector<std::string> sources;
  for (const auto& bind : vmm.binds) {
    sources.push_back(bind.source + " -> " + bind.destination);
    if (bind.access == BindAccess::kReadWrite) writable.push_back(bind.source);
  }
  // The run directory is the only thing QEMU may write.
  EXPECT_THAT(writable, ::testing::ElementsAre("/run/ralphd/vm/vm-1-1"));
  EXPECT_THAT(
      sources,
      ::testing::IsSupersetOf(
          {"/usr/bin/qemu-system-x86_64 -> /usr/bin/qemu-system-x86_64",
           "/usr/share/qemu -> /usr/share/qemu", "/build/vmlinuz -> /run/img/vmlinuz",
           "/build/initrd.img -> /run/img/initrd.img",
           "/var/lib/ralph/agent.img -> /run/img/base.img", "/run/ralphd/vm/vm-1-1 -> /run/vm"}));
  for (const auto& source : sources) {
    EXPECT_THAT(source, ::testing::Not(HasSubstr("/etc"))) << source;
    EXPECT_THAT(source, ::testing::Not(HasSubstr("/var/lib/ralph/agent.img -> /run/vm")));
  }
  // Guest memory (job + overhead, whole MiB) plus QEMU's own.
  EXPECT_EQ(GuestMemoryBytes(job, options), (300ull << 20) + options.guest_overhead_bytes);
  EXPECT_EQ(vmm.limits.memory_bytes, GuestMemoryBytes(job, options) + options.vmm_overhead_bytes);
  EXPECT_EQ(vmm.limits.cpu_millis, 1500u);
  // QEMU writes the whole state disk: its file-size limit must allow it.
  EXPECT_GE(vmm.limits.file_size_bytes, job.limits.disk_bytes + (64ull << 20));
  EXPECT_TRUE(ValidateSpec(vmm)) << ValidateSpec(vmm).error().ToString();
}

TEST(SweepDeadRunDirs, RemovesOnlyTheDirectoriesOfDeadOwners) {
  std::string dir = fmt::format("/tmp/ralph-vm-sweep-{}", ::getpid());
  std::filesystem::create_directories(dir);
  // A pid that is certainly dead: a child that exited and was reaped.
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  std::string dead = fmt::format("{}/vm-{}-1", dir, child);
  std::string live = fmt::format("{}/vm-{}-1", dir, ::getpid());
  std::string other = dir + "/vmm-root";
  for (const auto& d : {dead, live, other}) std::filesystem::create_directories(d + "/sub");
  std::ofstream(dead + "/state.img") << "x";
  auto removed = SweepDeadRunDirs(dir);
  ASSERT_TRUE(removed) << removed.error().ToString();
  EXPECT_EQ(*removed, 1u);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(live));
  EXPECT_TRUE(std::filesystem::exists(other));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ralph::sandbox::vm
