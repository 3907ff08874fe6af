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

namespace {

namespace rd = ralph::ralphd;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[values.size() / 2];
}

constexpr const char* kPolicy = R"(<policy format="1">
  <profile name="default">
    <limits memory="512MiB" cpu-millis="2000" pids="64" timeout="1h"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
</policy>
)";

// One job on a fresh daemon: submit-to-end wall time in ms and the job.exec
// rows of the log, or -1 ms on failure.
std::pair<double, size_t> TimeJob(const std::string& work, const std::string& base, bool record,
                                  int processes) {
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
    return {-1, 0};
  }
  rd::Caller root = rd::Caller::LocalUid(0);
  rd::Reply policy = (*daemon)->Dispatch(root, rd::PolicySetCommand{kPolicy, "bench"});
  if (!policy.ok()) {
    std::fprintf(stderr, "policy: %s\n", policy.error->ToString().c_str());
    return {-1, 0};
  }
  rd::JobSubmitCommand submit;
  submit.argv = {
      "/bin/sh", "-c",
      fmt::format("i=0; while [ $i -lt {} ]; do /bin/true; i=$((i+1)); done", processes)};
  auto start = Clock::now();
  rd::Reply submitted = (*daemon)->Dispatch(root, submit);
  if (!submitted.ok()) {
    std::fprintf(stderr, "submit: %s\n", submitted.error->ToString().c_str());
    return {-1, 0};
  }
  uint64_t id = submitted.body["id"].get<uint64_t>();
  for (;;) {
    pollfd ready{(*daemon)->notify_fd(), POLLIN, 0};
    if (poll(&ready, 1, -1) < 0) continue;
    (*daemon)->OnRunnerMessages();
    auto job = (*daemon)->store().Job(id);
    if (!job) return {-1, 0};
    if (job->state == rd::JobState::kSucceeded) break;
    if (job->state != rd::JobState::kRunning && job->state != rd::JobState::kQueued) {
      std::fprintf(stderr, "job ended %s: %s\n", std::string(rd::JobStateName(job->state)).c_str(),
                   job->reason.c_str());
      return {-1, 0};
    }
  }
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  daemon->reset();
  size_t rows = 0;
  auto log = ralph::audit::AuditLog::Open(state + "/audit.db", ralph::audit::OpenMode::kReadOnly);
  if (log) {
    auto listed = (*log)->List({.type = "job.exec", .subject = fmt::format("job {}", id)});
    if (listed) rows = listed->size();
  }
  std::system(fmt::format("rm -rf {}", state).c_str());
  return {ms, rows};
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
  std::vector<double> off, on;
  for (int round = 0; round < rounds; ++round) {
    for (bool record :
         round % 2 ? std::vector<bool>{true, false} : std::vector<bool>{false, true}) {
      auto [ms, rows] = TimeJob(work, base, record, processes);
      if (ms < 0) return 1;
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
  return std::system(fmt::format("rm -rf {}", work).c_str()) == 0 ? 0 : 1;
}
