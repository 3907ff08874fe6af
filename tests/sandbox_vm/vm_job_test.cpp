// VM jobs under TCG: a real QEMU microVM booting the guest image the build
// made (ralph_vm_guest_image), confined in a namespace job of a real
// SandboxService. Every name carries the test's pid.
#include "sandbox/vm/vm_job.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "platform/arch.h"
#include "platform/process.h"
#include "sandbox/vm/accel_probe.h"
#include "sandbox/vm/vm_pool.h"

namespace ralph::sandbox::vm {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class VmJobTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u) << "VM jobs need root (the jail's namespaces and cgroups)";
    ASSERT_EQ(::access("/usr/bin/qemu-system-x86_64", X_OK), 0)
        << "qemu-system-x86_64 missing (package qemu-system-x86)";
    ASSERT_EQ(::access("/usr/bin/mksquashfs", X_OK), 0) << "mksquashfs missing (squashfs-tools)";
    ASSERT_EQ(::access("/usr/bin/busybox", X_OK), 0) << "busybox missing (package busybox)";
    const char* binary_dir = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(binary_dir, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
    guest_dir_ = std::string(binary_dir) + "/sandbox-vm-guest";
    ASSERT_TRUE(fs::exists(guest_dir_ + "/initrd.img"))
        << "build the target ralph_vm_guest_image first";
    work_ = fmt::format("/tmp/ralph-vm-test-{}", ::getpid());
    fs::create_directories(work_ + "/base/bin");
    fs::create_directories(work_ + "/base/etc");
    fs::copy_file("/usr/bin/busybox", work_ + "/base/bin/busybox");
    for (const char* applet :
         {"sh", "echo", "cat", "head", "tr", "sleep", "ls", "id", "hostname", "dd"}) {
      fs::create_symlink("busybox", work_ + "/base/bin/" + applet);
    }
    std::ofstream(work_ + "/base/etc/motd") << "a base file\n";
    base_image_ = work_ + "/base.squashfs";
    auto made = RunProgramChecked({.argv = {"mksquashfs", work_ + "/base", base_image_, "-noappend",
                                            "-quiet", "-no-progress", "-all-root"}});
    ASSERT_TRUE(made) << made.error().ToString();
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(work_, ec);
  }

  void SetUp() override {
    cgroup_parent_ = fmt::format("ralph-vmtest-{}-{}", ::getpid(), counter_++);
    auto cgroups = DetectCgroups(cgroup_parent_);
    ASSERT_TRUE(cgroups) << cgroups.error().ToString();
    ServiceOptions options;
    options.state_dir = work_ + "/jail-state";
    options.name = fmt::format("vmt{}", ::getpid());
    options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
    options.max_pooled_volumes = 0;
    auto service = SandboxService::Create(options, std::move(*cgroups), nullptr);
    ASSERT_TRUE(service) << service.error().ToString();
    jail_ = std::move(*service);
    vm_options_.run_dir = work_ + "/run";
    fs::create_directories(vm_options_.run_dir);
    vm_options_.guest_kernel = guest_dir_ + "/vmlinuz";
    vm_options_.guest_initrd = guest_dir_ + "/initrd.img";
    vm_options_.accel = Accel::kTcg;
  }
  void TearDown() override { jail_.reset(); }

  SandboxSpec Spec(std::vector<std::string> argv) {
    SandboxSpec spec;
    spec.base_kind = BaseKind::kImage;
    spec.base = base_image_;
    spec.argv = std::move(argv);
    spec.env = {"PATH=/bin"};
    spec.network.enabled = false;
    spec.limits.memory_bytes = 128ull << 20;
    spec.limits.disk_bytes = 32ull << 20;
    return spec;
  }

  Result<JobResult> RunVm(const SandboxSpec& spec) {
    auto job = TRY(VmJob::Start(*jail_, vm_options_, spec));
    auto result = job->Wait();
    if (!result) return std::move(result.error()).WithContext("console: " + job->ConsoleLog());
    last_vmm_usage_ = job->vmm_usage();
    TRY(job->Destroy());
    return result;
  }
  CgroupUsage last_vmm_usage_;

  static inline std::string work_, guest_dir_, base_image_;
  static inline int counter_ = 0;
  std::string cgroup_parent_;
  std::unique_ptr<SandboxService> jail_;
  VmJobOptions vm_options_;
};

TEST_F(VmJobTest, EchoHelloGivesItsOutputAndExitStatus) {
  auto result = RunVm(Spec({"echo", "hello"}));
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_EQ(result->exit_code, 0);
  EXPECT_EQ(result->stdout_data, "hello\n");
  EXPECT_EQ(result->stderr_data, "");

  result = RunVm(Spec({"sh", "-c", "echo out; echo err >&2; exit 3"}));
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_EQ(result->exit_code, 3);
  EXPECT_EQ(result->stdout_data, "out\n");
  EXPECT_EQ(result->stderr_data, "err\n");
}

TEST_F(VmJobTest, TheSameSpecGivesTheSameOutputAsANamespaceJob) {
  // What the job sees of its root, its ids, its hostname and its workspace,
  // and a file it writes.
  SandboxSpec spec = Spec({"sh", "-c",
                           "ls /; id -u; hostname; cat /etc/motd; echo made > /work/f; "
                           "cat /work/f; ls -a /work; exit 7"});
  auto vm = RunVm(spec);
  ASSERT_TRUE(vm) << vm.error().ToString();

  auto cgroups = DetectCgroups(cgroup_parent_ + "-ns");
  ASSERT_TRUE(cgroups);
  ServiceOptions options;
  options.state_dir = work_ + "/ns-state";
  options.name = fmt::format("vmtns{}", ::getpid());
  options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
  auto service = SandboxService::Create(options, std::move(*cgroups), nullptr);
  ASSERT_TRUE(service) << service.error().ToString();
  auto id = (*service)->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_TRUE((*service)->Run(*id));
  auto ns = (*service)->Wait(*id);
  ASSERT_TRUE(ns) << ns.error().ToString();
  ASSERT_TRUE((*service)->Destroy(*id));

  EXPECT_EQ(vm->termination, ns->termination);
  EXPECT_EQ(vm->exit_code, 7);
  EXPECT_EQ(vm->exit_code, ns->exit_code);
  EXPECT_EQ(vm->stdout_data, ns->stdout_data);
  EXPECT_EQ(vm->stderr_data, ns->stderr_data);
  EXPECT_THAT(vm->stdout_data, HasSubstr("a base file\nmade\n"));
}

TEST_F(VmJobTest, MemoryLimitHitsTheGuestsOom) {
  // The shell keeps 200 MB of command output in memory; the job may have 32.
  SandboxSpec spec =
      Spec({"sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"});
  spec.limits.memory_bytes = 32ull << 20;
  auto result = RunVm(spec);
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->termination, Termination::kSignaled);
  EXPECT_EQ(result->signal, SIGKILL);
  EXPECT_GE(result->cgroup.oom_kills, 1u);
  EXPECT_EQ(result->stdout_data, "");
  // The host's view: QEMU's own cgroup was never out of memory, and it
  // did use memory (the figure is real).
  EXPECT_EQ(last_vmm_usage_.oom_kills, 0u);
  EXPECT_GT(last_vmm_usage_.memory_peak_bytes, 32ull << 20);
}

TEST_F(VmJobTest, TheTimeoutAndTheDiskQuotaHoldInTheGuest) {
  SandboxSpec spec = Spec({"sleep", "1000"});
  spec.timeout = std::chrono::seconds(2);
  auto result = RunVm(spec);
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->termination, Termination::kTimedOut);

  // 32 MiB of disk: writing 40 MB into the workspace ends in ENOSPC.
  spec = Spec({"sh", "-c", "dd if=/dev/zero of=/work/big bs=1M count=40; echo status=$?"});
  result = RunVm(spec);
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_EQ(result->stdout_data, "status=1\n");
  EXPECT_THAT(result->stderr_data, HasSubstr("No space left on device"));
}

TEST_F(VmJobTest, KillingTheJobKillsTheVmAndLeavesNothingBehind) {
  auto job = VmJob::Start(*jail_, vm_options_, Spec({"sh", "-c", "echo up; sleep 1000"}));
  ASSERT_TRUE(job) << job.error().ToString();
  std::string run_dir = (*job)->run_dir();
  ASSERT_TRUE(fs::exists(run_dir + "/state.img"));
  std::string seen;
  // The job is running once its first output arrived; then it is killed.
  auto result = (*job)->Wait([&](OutputStream, std::string_view chunk) {
    seen.append(chunk);
    if (seen == "up\n") (*job)->Kill();
  });
  EXPECT_EQ(seen, "up\n");
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().ToString(), HasSubstr("the VM ended before its job reported an exit"));
  ASSERT_TRUE((*job)->Destroy());
  EXPECT_EQ(jail_->job_count(), 0u);
  // No file, socket or state disk left.
  EXPECT_FALSE(fs::exists(run_dir));
  // No cgroup of the VMM left under the jail's parent (v2, or each v1
  // hierarchy); the parent itself lives as long as the jail's service.
  int parents = 0;
  for (const char* root : {"/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids",
                           "/sys/fs/cgroup/cpu,cpuacct"}) {
    std::string parent = fmt::format("{}/{}", root, cgroup_parent_);
    if (!fs::exists(parent)) continue;
    ++parents;
    for (const auto& entry : fs::directory_iterator(parent)) {
      EXPECT_FALSE(entry.is_directory()) << "left behind: " << entry.path();
    }
  }
  EXPECT_GT(parents, 0) << "the jail's cgroup parent " << cgroup_parent_ << " was not found";
  // No mount of the run directory in the host's namespace.
  std::ifstream mounts("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mounts, line)) EXPECT_THAT(line, ::testing::Not(HasSubstr(run_dir)));
}

// The host's view of a running VM job's QEMU: no capability, an
// unprivileged uid, its own network namespace with nothing but loopback,
// and a root holding only its own files.
TEST_F(VmJobTest, QemuRunsWithoutCapabilitiesNetworkOrHostFiles) {
  auto job = VmJob::Start(*jail_, vm_options_, Spec({"sh", "-c", "echo up; sleep 1000"}));
  ASSERT_TRUE(job) << job.error().ToString();
  pid_t qemu = (*job)->vmm_pid();
  ASSERT_GT(qemu, 0);
  std::string status;
  {
    std::ifstream in(fmt::format("/proc/{}/status", qemu));
    status.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (const char* caps :
       {"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000"}) {
    EXPECT_THAT(status, HasSubstr(caps));
  }
  EXPECT_THAT(status, HasSubstr("NoNewPrivs:\t1"));
  EXPECT_THAT(status, HasSubstr("Seccomp:\t2"));
  EXPECT_THAT(status, ::testing::Not(HasSubstr("Uid:\t0\t")));
  // Its own namespaces.
  for (const char* ns : {"net", "mnt", "pid", "user", "ipc", "uts"}) {
    EXPECT_NE(fs::read_symlink(fmt::format("/proc/{}/ns/{}", qemu, ns)),
              fs::read_symlink(fmt::format("/proc/self/ns/{}", ns)))
        << ns;
  }
  // Its network namespace has loopback only.
  std::ifstream dev(fmt::format("/proc/{}/net/dev", qemu));
  std::string line;
  std::vector<std::string> links;
  while (std::getline(dev, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    links.push_back(name);
  }
  EXPECT_THAT(links, ::testing::ElementsAre("lo"));
  // Its root: the merged-/usr links, its own binds, the sandbox's own
  // mounts and /etc (the sandbox's, with only what the sandbox writes); no
  // /home, /root or /var of the host.
  std::vector<std::string> top;
  for (const auto& entry : fs::directory_iterator(fmt::format("/proc/{}/root", qemu))) {
    top.push_back(entry.path().filename().string());
  }
  for (const char* host_only : {"home", "root", "var", "boot", "srv", "opt"}) {
    EXPECT_THAT(top, ::testing::Not(::testing::Contains(host_only))) << host_only;
  }
  for (const auto& entry : fs::directory_iterator(fmt::format("/proc/{}/root/etc", qemu))) {
    std::string name = entry.path().filename().string();
    EXPECT_THAT(name, ::testing::AnyOf("resolv.conf", "hostname", "hosts")) << name;
  }
  std::vector<std::string> usr;
  for (const auto& entry : fs::directory_iterator(fmt::format("/proc/{}/root/usr", qemu))) {
    usr.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(usr, ::testing::Not(::testing::Contains("sbin")));
  EXPECT_THAT(usr, ::testing::Not(::testing::Contains("local")));
  (*job)->Kill();
  (void)(*job)->Wait();
  ASSERT_TRUE((*job)->Destroy());
}

TEST_F(VmJobTest, WhatAVmJobCannotHaveYetIsRefusedByName) {
  SandboxSpec spec = Spec({"true"});
  spec.network.enabled = true;
  auto job = VmJob::Start(*jail_, vm_options_, spec);
  ASSERT_FALSE(job);
  EXPECT_EQ(job.error().code(), ErrorCode::kUnsupported);
  EXPECT_THAT(job.error().ToString(), HasSubstr("network.enabled"));
}

TEST_F(VmJobTest, APooledVmTakesOneJobThatFitsItsShape) {
  SandboxSpec shape = Spec({"true"});
  VmPool pool(*jail_, vm_options_, shape, 1);
  ASSERT_TRUE(pool.Fill());
  EXPECT_EQ(pool.waiting(), 1u);
  // More memory than the pool's VMs have: none is handed over.
  SandboxSpec big = Spec({"echo", "big"});
  big.limits.memory_bytes = shape.limits.memory_bytes * 2;
  auto none = pool.Take(big);
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, nullptr);
  EXPECT_EQ(pool.waiting(), 1u);
  // A job asking for less runs in the waiting VM, held to its own limit.
  SandboxSpec small = Spec({"sh", "-c", "echo pooled; exit 4"});
  small.limits.memory_bytes = 64ull << 20;
  auto job = pool.Take(small);
  ASSERT_TRUE(job) << job.error().ToString();
  ASSERT_NE(*job, nullptr);
  EXPECT_EQ(pool.waiting(), 0u);
  auto result = (*job)->Wait();
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->exit_code, 4);
  EXPECT_EQ(result->stdout_data, "pooled\n");
  // A VM takes one job.
  auto again = (*job)->Begin(small);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE((*job)->Destroy());
  auto empty = pool.Take(small);
  ASSERT_TRUE(empty);
  EXPECT_EQ(*empty, nullptr);
}

// The probe judges KVM by a guest that answered: one that never reaches its
// agent (here a kernel without an initrd: it panics, and -no-reboot ends
// QEMU) is TCG, with the reason. The real probe gives a verdict either way.
TEST_F(VmJobTest, TheAcceleratorProbeTakesKvmOnlyFromAGuestThatAnswered) {
  AccelProbeOptions options{guest_dir_ + "/vmlinuz", work_ + "/empty-initrd", work_,
                            std::chrono::seconds(60)};
  std::ofstream(work_ + "/empty-initrd") << "not a cpio archive";
  auto verdict = ProbeAccelerator(options);
  ASSERT_TRUE(verdict) << verdict.error().ToString();
  EXPECT_EQ(verdict->accel, Accel::kTcg);
  EXPECT_FALSE(verdict->reason.empty());

  options.guest_initrd = guest_dir_ + "/initrd.img";
  options.timeout = std::chrono::seconds(10);
  verdict = ProbeAccelerator(options);
  ASSERT_TRUE(verdict) << verdict.error().ToString();
  std::printf("accelerator probe on this host: %s %s\n",
              verdict->accel == Accel::kKvm ? "kvm" : "tcg", verdict->reason.c_str());
  EXPECT_EQ(verdict->accel == Accel::kKvm, verdict->reason.empty());
}

}  // namespace
}  // namespace ralph::sandbox::vm
