// Job start to the first byte of output: a VM job (cold boot of a QEMU
// microVM with the namespace sandbox inside, under TCG), a VM job handed a
// VM booted ahead (VmPool), and a namespace job of the same spec, in one
// run, as ratios; then memory: the PSS of an idle pooled VM's QEMU (booted,
// no job), of the same QEMU running a job (`sleep`), and of a namespace
// job running the same `sleep` (its processes). Prints the median of each
// and the load average.
//
//   vm_start_bench [--runs N]     (default 3)
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/arch.h"
#include "platform/process.h"
#include "sandbox/service.h"
#include "sandbox/vm/accel_probe.h"
#include "sandbox/vm/vm_job.h"
#include "sandbox/vm/vm_pool.h"
#include "tests/support/bench_stats.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
namespace sb = ralph::sandbox;
namespace vm = ralph::sandbox::vm;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// A process's proportional set size in KiB (smaps_rollup), 0 when gone.
uint64_t PssKib(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/smaps_rollup", pid));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Pss:", 0) == 0) return std::strtoull(line.c_str() + 4, nullptr, 10);
  }
  return 0;
}

// The pid a pidfd names (its fdinfo), 0 when it is not known.
pid_t PidOf(int pidfd) {
  std::ifstream in(fmt::format("/proc/self/fdinfo/{}", pidfd));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Pid:", 0) == 0) return static_cast<pid_t>(std::atol(line.c_str() + 4));
  }
  return 0;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "vm_start_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 3;
  if (argc == 3 && std::string(argv[1]) == "--runs") runs = std::atoi(argv[2]);
  if (runs < 1) return Fail("--runs must be at least 1");
  std::string guest_dir = RALPH_VM_GUEST_DIR;
  std::string work = fmt::format("/tmp/ralph-vm-bench-{}", ::getpid());
  fs::create_directories(work + "/base/bin");
  fs::create_directories(work + "/run");
  fs::copy_file("/usr/bin/busybox", work + "/base/bin/busybox");
  fs::create_symlink("busybox", work + "/base/bin/echo");
  fs::create_symlink("busybox", work + "/base/bin/sleep");
  std::string image = work + "/base.squashfs";
  auto made = ralph::RunProgramChecked({.argv = {"mksquashfs", work + "/base", image, "-noappend",
                                                 "-quiet", "-no-progress", "-all-root"}});
  if (!made) return Fail(made.error().ToString());

  auto verdict = vm::ProbeAccelerator({guest_dir + "/vmlinuz", guest_dir + "/initrd.img", work});
  if (!verdict) return Fail(verdict.error().ToString());

  auto make_service = [&](const std::string& tag) {
    auto cgroups = sb::DetectCgroups(fmt::format("ralph-vmbench-{}-{}", ::getpid(), tag));
    if (!cgroups) return ralph::Result<std::unique_ptr<sb::SandboxService>>(cgroups.error());
    sb::ServiceOptions options;
    options.state_dir = work + "/state-" + tag;
    options.name = fmt::format("vmb{}{}", ::getpid(), tag);
    options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
    return sb::SandboxService::Create(options, std::move(*cgroups), nullptr);
  };
  auto ns_service = make_service("ns");
  auto jail = make_service("jail");
  if (!ns_service || !jail) return Fail("creating the sandbox services");

  sb::SandboxSpec spec;
  spec.base_kind = sb::BaseKind::kImage;
  spec.base = image;
  spec.argv = {"echo", "hello"};
  spec.env = {"PATH=/bin"};
  spec.network.enabled = false;
  spec.limits.memory_bytes = 128ull << 20;
  spec.limits.disk_bytes = 32ull << 20;

  vm::VmJobOptions options;
  options.run_dir = work + "/run";
  options.guest_kernel = guest_dir + "/vmlinuz";
  options.guest_initrd = guest_dir + "/initrd.img";
  // The jail cannot pass /dev/kvm yet (vm_job.h): VM jobs run under TCG.
  options.accel = vm::Accel::kTcg;

  std::vector<double> ns_ms, vm_ms, pool_ms;
  auto pool = std::make_unique<vm::VmPool>(**jail, options, spec, 1);
  for (int i = 0; i < runs; ++i) {
    // Namespace job: create, run, first chunk of output.
    auto t0 = Clock::now();
    std::optional<Clock::time_point> first;
    auto id = (*ns_service)->CreateJob(spec);
    if (!id) return Fail(id.error().ToString());
    if (auto ran = (*ns_service)->Run(*id); !ran) return Fail(ran.error().ToString());
    auto result = (*ns_service)->Wait(*id, [&](sb::OutputStream, std::string_view) {
      if (!first) first = Clock::now();
    });
    if (!result || !first) return Fail("the namespace job gave no output");
    ns_ms.push_back(Ms(*first - t0));
    (void)(*ns_service)->Destroy(*id);

    // VM job: jail, boot, guest sandbox, first chunk of output.
    t0 = Clock::now();
    first.reset();
    auto job = vm::VmJob::Start(**jail, options, spec);
    if (!job) return Fail(job.error().ToString());
    auto vm_result = (*job)->Wait([&](sb::OutputStream, std::string_view) {
      if (!first) first = Clock::now();
    });
    if (!vm_result || !first) return Fail("the VM job gave no output");
    vm_ms.push_back(Ms(*first - t0));
    (void)(*job)->Destroy();

    // From the pool: booted ahead (not timed), handed over, first chunk.
    if (auto filled = pool->Fill(); !filled) return Fail(filled.error().ToString());
    t0 = Clock::now();
    first.reset();
    auto pooled = pool->Take(spec);
    if (!pooled || !*pooled) return Fail("the pool handed over no VM");
    auto pooled_result = (*pooled)->Wait([&](sb::OutputStream, std::string_view) {
      if (!first) first = Clock::now();
    });
    if (!pooled_result || !first) return Fail("the pooled VM job gave no output");
    pool_ms.push_back(Ms(*first - t0));
    (void)(*pooled)->Destroy();
  }
  double ns = ralph::testing::Median(ns_ms);
  double vmt = ralph::testing::Median(vm_ms);
  double pooled = ralph::testing::Median(pool_ms);
  std::printf("accelerator: %s (%s)\n", verdict->accel == vm::Accel::kKvm ? "kvm" : "tcg",
              verdict->reason.empty() ? "probe guest answered" : verdict->reason.c_str());
  std::printf(
      "start -> first output byte, median of %d: namespace job %.1f ms, VM job (cold, "
      "TCG) %.1f ms, ratio %.1fx\n",
      runs, ns, vmt, vmt / ns);
  std::printf(
      "start -> first output byte, median of %d: VM job from the pool (booted ahead) "
      "%.1f ms, ratio to the namespace job %.1fx\n",
      runs, pooled, pooled / ns);

  // Memory: an idle pooled VM, the same VM running a job, and a namespace
  // job running the same command, each once its job has started.
  sb::SandboxSpec sleeper = spec;
  sleeper.argv = {"sleep", "5"};
  auto idle = vm::VmJob::Boot(**jail, options, sleeper);
  if (!idle) return Fail(idle.error().ToString());
  uint64_t idle_kib = PssKib((*idle)->vmm_pid());
  if (auto begun = (*idle)->Begin(sleeper); !begun) return Fail(begun.error().ToString());
  uint64_t running_kib = PssKib((*idle)->vmm_pid());
  (*idle)->Kill();
  (void)(*idle)->Destroy();
  auto ns_id = (*ns_service)->CreateJob(sleeper);
  if (!ns_id) return Fail(ns_id.error().ToString());
  if (auto ran = (*ns_service)->Run(*ns_id); !ran) return Fail(ran.error().ToString());
  auto ns_pidfd = (*ns_service)->PidFd(*ns_id);
  uint64_t ns_kib = ns_pidfd ? PssKib(PidOf(*ns_pidfd)) : 0;
  (void)(*ns_service)->Kill(*ns_id);
  (void)(*ns_service)->Wait(*ns_id);
  (void)(*ns_service)->Destroy(*ns_id);
  if (idle_kib == 0 || running_kib == 0 || ns_kib == 0) return Fail("a PSS could not be read");
  std::printf(
      "memory (PSS, guest memory %llu MiB): idle pooled VM's QEMU %.1f MiB, running VM job's "
      "QEMU %.1f MiB, namespace job's PID 1 %.2f MiB; ratio running VM job / namespace job "
      "%.0fx\n",
      static_cast<unsigned long long>(vm::GuestMemoryBytes(sleeper, options) >> 20),
      idle_kib / 1024.0, running_kib / 1024.0, ns_kib / 1024.0,
      static_cast<double>(running_kib) / static_cast<double>(ns_kib));
  std::printf("load average: %s\n", ralph::testing::LoadAverage().c_str());
  pool.reset();
  ns_service->reset();
  jail->reset();
  std::error_code ec;
  fs::remove_all(work, ec);
  return 0;
}
