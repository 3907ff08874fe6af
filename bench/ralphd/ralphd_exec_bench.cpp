// The cost of recording every exec, through ralphd end to end: one job
// running N short processes (a shell loop of /bin/true) submitted to a
// Daemon in this process, with exec recording (the sandbox's records, the
// bounded queue, the writer thread's batched audit appends) and without
// (DaemonOptions::record_exec), alternating in one run, several rounds.
// Each job gets a fresh daemon on a fresh state dir (not timed); the time
// is from submit to the job's final state, its audit rows in the log. With
// recording, the job.exec rows are counted to check that none was lost.
//
// usage: ralphd_exec_bench [processes=10000] [rounds=5]
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "services/audit/audit_log.h"
#include "services/ralphd/daemon.h"
#include "tests/support/bench_stats.h"

namespace {

namespace rd = ralph::ralphd;
using ralph::testing::Median;
using Clock = std::chrono::steady_clock;

constexpr const char* kPolicy = R"(<policy format="1">
  <profile name="default">
    <limits memory="512MiB" cpu-millis="2000" pids="64" timeout="1h"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
</policy>
)";

double ProcessCpuMs() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 +
         (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3;
}

struct JobFigures {
  double wall_ms = -1;  // -1: the job failed
  double daemon_cpu_ms = 0;
  double job_cpu_ms = 0;  // its cgroup's
  size_t exec_rows = 0;
};

// One job on a fresh daemon: submit-to-end wall time, the CPU of this
// process (the daemon: loop, job thread, audit writer) and of the job, and
// the job.exec rows of the log.
JobFigures TimeJob(const std::string& work, const std::string& base, bool record, int processes) {
  JobFigures figures;
  std::string state = fmt::format("{}/state-{}", work, record ? "on" : "off");
  rd::DaemonOptions options;
  options.state_dir = state;
  options.environment.base = base;
  options.record_exec = record;
  options.log = [](ralph::LogLevel level, const std::string& message) {
    if (level <= ralph::LogLevel::kWarning) std::fprintf(stderr, "ralphd: %s\n", message.c_str());
  };
  auto daemon = rd::Daemon::Open(options);
  if (!daemon) {
    std::fprintf(stderr, "daemon: %s\n", daemon.error().ToString().c_str());
    return figures;
  }
  rd::Caller root = rd::Caller::LocalUid(0);
  rd::Reply policy = (*daemon)->Dispatch(root, rd::PolicySetCommand{kPolicy, "bench"});
  if (!policy.ok()) {
    std::fprintf(stderr, "policy: %s\n", policy.error->ToString().c_str());
    return figures;
  }
  rd::JobSubmitCommand submit;
  submit.argv = {
      "/bin/sh", "-c",
      fmt::format("i=0; while [ $i -lt {} ]; do /bin/true; i=$((i+1)); done", processes)};
  double cpu_start = ProcessCpuMs();
  auto start = Clock::now();
  rd::Reply submitted = (*daemon)->Dispatch(root, submit);
  if (!submitted.ok()) {
    std::fprintf(stderr, "submit: %s\n", submitted.error->ToString().c_str());
    return figures;
  }
  uint64_t id = submitted.body["id"].get<uint64_t>();
  for (;;) {
    pollfd ready{(*daemon)->notify_fd(), POLLIN, 0};
    if (poll(&ready, 1, -1) < 0) continue;
    (*daemon)->OnRunnerMessages();
    auto job = (*daemon)->store().Job(id);
    if (!job) return figures;
    if (job->state == rd::JobState::kSucceeded) break;
    if (job->state != rd::JobState::kRunning && job->state != rd::JobState::kQueued) {
      std::fprintf(stderr, "job ended %s: %s\n", std::string(rd::JobStateName(job->state)).c_str(),
                   job->reason.c_str());
      return figures;
    }
  }
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  figures.daemon_cpu_ms = ProcessCpuMs() - cpu_start;
  if (auto job = (*daemon)->store().Job(id))
    figures.job_cpu_ms = job->usage.value("cgroup_cpu_ns", 0.0) / 1e6;
  daemon->reset();
  size_t rows = 0;
  auto log = ralph::audit::AuditLog::Open(state + "/audit.db", ralph::audit::OpenMode::kReadOnly);
  if (log) {
    auto listed = (*log)->List({.type = "job.exec", .subject = fmt::format("job {}", id)});
    if (listed) rows = listed->size();
  }
  std::system(fmt::format("rm -rf {}", state).c_str());
  figures.wall_ms = ms;
  figures.exec_rows = rows;
  return figures;
}

}  // namespace

int main(int argc, char** argv) {
  int processes = argc > 1 ? std::atoi(argv[1]) : 10000;
  int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  if (processes <= 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: ralphd_exec_bench [processes>0] [rounds>0]\n");
    return 2;
  }
  std::string work = fmt::format("/tmp/ralphd-exec-bench-{}", getpid());
  std::string base = work + "/base";
  if (std::system(fmt::format("mkdir -p {0}/usr {0}/etc && for l in bin lib lib64 sbin; do "
                              "ln -s usr/$l {0}/$l; done",
                              base)
                      .c_str()) != 0)
    return 1;
  std::printf(
      "ralphd_exec_bench: one ralphd job running %d x /bin/true in a shell loop, %d rounds\n",
      processes, rounds);
  std::vector<double> off, on, cpu_off, cpu_on, job_off, job_on;
  for (int round = 0; round < rounds; ++round) {
    for (bool record :
         round % 2 ? std::vector<bool>{true, false} : std::vector<bool>{false, true}) {
      JobFigures figures = TimeJob(work, base, record, processes);
      if (figures.wall_ms < 0) return 1;
      double ms = figures.wall_ms;
      size_t rows = figures.exec_rows;
      (record ? cpu_on : cpu_off).push_back(figures.daemon_cpu_ms);
      (record ? job_on : job_off).push_back(figures.job_cpu_ms);
      // sh and every /bin/true: nothing lost.
      size_t expected = record ? static_cast<size_t>(processes) + 1 : 0;
      if (rows != expected) {
        std::fprintf(stderr, "%zu job.exec rows, expected %zu\n", rows, expected);
        return 1;
      }
      (record ? on : off).push_back(ms);
    }
    std::printf("  round %d: off %9.1f ms  on %9.1f ms  (%.3f)\n", round + 1, off.back(), on.back(),
                on.back() / off.back());
  }
  double median_off = Median(off), median_on = Median(on);
  std::printf("median: off %.1f ms, on %.1f ms (%d job.exec rows each)\n", median_off, median_on,
              processes + 1);
  std::printf("ratio on/off: %.3f (requirement <= 1.10)\n", median_on / median_off);
  double total_off = Median(cpu_off) + Median(job_off), total_on = Median(cpu_on) + Median(job_on);
  std::printf(
      "CPU (median): daemon off %.1f ms, on %.1f ms (%.1f us per exec); job cgroup off "
      "%.1f ms, on %.1f ms; together ratio %.3f\n",
      Median(cpu_off), Median(cpu_on), 1000 * (Median(cpu_on) - Median(cpu_off)) / (processes + 1),
      Median(job_off), Median(job_on), total_on / total_off);
  return std::system(fmt::format("rm -rf {}", work).c_str()) == 0 ? 0 : 1;
}
