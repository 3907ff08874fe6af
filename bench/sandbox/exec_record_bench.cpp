// The cost of recording every exec inside a sandbox (SandboxSpec::
// record_exec): one job that runs N short processes (a shell loop of
// /bin/true), with and without recording, alternating in one run, several
// rounds; prints each round, the median wall time of each and their ratio.
// Each job is a whole create + run + wait + destroy on a long-running
// SandboxService (network off: the loop's cost is fork + exec + exit).
// With recording the records go into JobResult::execs (no callback), so
// the figure is the sandbox layer's own: stop, read, answer. On a loaded
// machine the wall times swing with the load; the CPU figures (the job's
// cgroup and the supervising thread) much less.
//
// usage: exec_record_bench [processes=10000] [rounds=5]
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/arch.h"
#include "sandbox/service.h"
#include "tests/support/bench_stats.h"

namespace {

using ralph::testing::LoadAverage;
using ralph::testing::Median;

namespace sb = ralph::sandbox;
using Clock = std::chrono::steady_clock;

}  // namespace

int main(int argc, char** argv) {
  int processes = argc > 1 ? std::atoi(argv[1]) : 10000;
  int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  if (processes <= 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: exec_record_bench [processes>0] [rounds>0]\n");
    return 2;
  }
  std::string work = fmt::format("/tmp/ralph-exec-bench-{}", getpid());
  std::string base = work + "/base";
  std::string state = work + "/state";
  for (const std::string& dir : {work, base, base + "/usr", base + "/etc", state})
    mkdir(dir.c_str(), 0755);
  for (const char* link : {"bin", "lib", "lib64", "sbin"})
    if (symlink(fmt::format("usr/{}", link).c_str(), (base + "/" + link).c_str()) != 0) return 1;

  auto cgroups = sb::DetectCgroups(fmt::format("ralph-exec-bench-{}", getpid()));
  if (!cgroups) {
    std::fprintf(stderr, "cgroups: %s\n", cgroups.error().ToString().c_str());
    return 1;
  }
  sb::ServiceOptions options;
  options.state_dir = state;
  options.name = fmt::format("execbench{}", getpid());
  options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
  auto service = sb::SandboxService::Create(options, std::move(*cgroups), nullptr);
  if (!service) {
    std::fprintf(stderr, "service: %s\n", service.error().ToString().c_str());
    return 1;
  }
  sb::SandboxSpec spec;
  spec.base = base;
  spec.binds = {{"/usr", "/usr", sb::BindAccess::kReadOnly}};
  spec.argv = {"/bin/sh", "-c",
               fmt::format("i=0; while [ $i -lt {} ]; do /bin/true; i=$((i+1)); done", processes)};
  spec.env = {"PATH=/usr/bin:/bin"};
  spec.network.enabled = false;
  spec.limits.cpu_millis = 2000;  // the loop is not throttled by the default one CPU

  // CPU time of this thread (the job's supervisor: Run and Wait), in ms.
  auto thread_cpu = [] {
    rusage usage{};
    getrusage(RUSAGE_THREAD, &usage);
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 +
           (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3;
  };
  std::vector<double> cpu_off, cpu_on, job_cpu_off, job_cpu_on;
  // Wall time of one job in ms; -1 on failure.
  auto time_job = [&](bool record) -> double {
    sb::SandboxSpec job = spec;
    job.record_exec = record;
    double cpu_start = thread_cpu();
    auto start = Clock::now();
    auto id = (*service)->CreateJob(job);
    if (!id || !(*service)->Run(*id)) return -1;
    auto result = (*service)->Wait(*id);
    auto end = Clock::now();
    (record ? cpu_on : cpu_off).push_back(thread_cpu() - cpu_start);
    if (!result || result->exit_code != 0 || !(*service)->Destroy(*id)) return -1;
    (record ? job_cpu_on : job_cpu_off).push_back(result->cgroup.cpu_usage_ns / 1e6);
    size_t expected = record ? static_cast<size_t>(processes) + 1 : 0;
    if (result->execs.size() != expected) {
      std::fprintf(stderr, "%zu exec records, expected %zu\n", result->execs.size(), expected);
      return -1;
    }
    return std::chrono::duration<double, std::milli>(end - start).count();
  };
  std::printf("exec_record_bench: one job running %d x /bin/true in a shell loop, %d rounds\n",
              processes, rounds);
  std::printf("load average at the start: %s\n", LoadAverage().c_str());
  std::vector<double> off, on;
  for (int round = 0; round < rounds; ++round) {
    // Alternate which goes first, so that drift hits both alike.
    for (bool record :
         round % 2 ? std::vector<bool>{true, false} : std::vector<bool>{false, true}) {
      double ms = time_job(record);
      if (ms < 0) {
        std::fprintf(stderr, "a job failed (recording %s)\n", record ? "on" : "off");
        return 1;
      }
      (record ? on : off).push_back(ms);
    }
    std::printf("  round %d: off %9.1f ms  on %9.1f ms  (%.3f)\n", round + 1, off.back(), on.back(),
                on.back() / off.back());
  }
  double median_off = Median(off), median_on = Median(on);
  std::printf("median: off %.1f ms (%.1f us per process), on %.1f ms (%.1f us per process)\n",
              median_off, 1000 * median_off / processes, median_on, 1000 * median_on / processes);
  std::printf("ratio on/off: %.3f (requirement <= 1.10)\n", median_on / median_off);
  std::printf("supervisor thread CPU (median): off %.1f ms, on %.1f ms: %.1f us per exec\n",
              Median(cpu_off), Median(cpu_on),
              1000 * (Median(cpu_on) - Median(cpu_off)) / (processes + 1));
  // CPU is what the load average does not inflate: the job's own (its
  // cgroup) plus its supervisor's, with and without.
  double total_off = Median(job_cpu_off) + Median(cpu_off);
  double total_on = Median(job_cpu_on) + Median(cpu_on);
  std::printf(
      "job cgroup CPU (median): off %.1f ms, on %.1f ms; with the supervisor: off %.1f ms, "
      "on %.1f ms, ratio %.3f\n",
      Median(job_cpu_off), Median(job_cpu_on), total_off, total_on, total_on / total_off);
  std::printf("load average at the end: %s\n", LoadAverage().c_str());
  service->reset();
  IgnoreError(sb::UnmountIdleVolumes(state + "/images"));
  return std::system(("rm -rf " + work).c_str()) == 0 ? 0 : 1;
}
