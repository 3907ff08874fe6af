// The audit log's durable append rate and its indexed queries at scale
// (docs/benchmarks.md):
//
//   audit_bench [rows] [batch] [dir] [jobs|spread]
//
// On a fresh log in `dir` (default /var/tmp: a disk, so every commit's
// fsync is real): 200 single Appends (one WAL sync each), then 200,000 rows
// in AppendBatch calls of `batch` (default 1000: one WAL sync per batch),
// then the log is grown to `rows` (default 10 million) in the same batches
// and queried: one job's records (100 of them, spread over the whole log),
// the newest 100 of a type, an hour's range. The log's clock is synthetic:
// 3 s per row (a batch's rows share its time), so ten million rows span a
// year and an hour holds one or two batches. Targets: >= 100,000 records/s
// durable; one job's records among 10 million in < 50 ms.
//
// Which job a row belongs to (every job has 100 rows, 100,000 jobs in ten
// million rows):
//   jobs    (default) as ralphd writes them: 64 jobs at a time, each one's
//           rows interleaved with the others' over its life (6,400 rows),
//           then the next 64; the by-subject index grows at a few places.
//   spread  the worst case: row i is job i % 100,000, so every batch
//           touches a thousand places of that index, all over it, and each
//           job's rows span the whole log.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "services/audit/audit_log.h"

namespace {

using Clock = std::chrono::steady_clock;
using ralph::audit::AuditEvent;
using ralph::audit::AuditLog;

constexpr int64_t kRowsPerJob = 100;
constexpr int64_t kSpreadJobs = 100000;  // spread: subjects "job 0" .. "job 99999"
constexpr int64_t kConcurrentJobs = 64;  // jobs: how many write at a time
const char* const kTypes[] = {"job.submit", "job.state", "command", "net.denied", "job.files"};

enum class Pattern { kJobs, kSpread };

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "audit_bench: %s\n", why.c_str());
  std::exit(1);
}

int64_t JobOf(Pattern pattern, int64_t i) {
  if (pattern == Pattern::kSpread) return i % kSpreadJobs;
  const int64_t block = kConcurrentJobs * kRowsPerJob;
  return (i / block) * kConcurrentJobs + i % kConcurrentJobs;
}

// Row i: a job's record as ralphd writes them.
AuditEvent Event(Pattern pattern, int64_t i) {
  return {.actor = "ralphd",
          .type = kTypes[i % 5],
          .subject = fmt::format("job {}", JobOf(pattern, i)),
          .details = {{"caller", "uid:0"}, {"result", "ok"}, {"state", "running"}, {"n", i}}};
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}
double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

double CpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

struct Rate {
  double per_second = 0;  // records per second of wall time
  double cpu_us = 0;      // this process's CPU per record (what a shared host hides)
};

// Appends rows [from, to) in batches, counting them in `appended`. The
// events are made before the clock starts: the caller's cost, not the log's.
Rate Grow(AuditLog& log, Pattern pattern, int64_t from, int64_t to, size_t batch,
          int64_t& appended) {
  std::vector<std::vector<AuditEvent>> batches;
  Rate rate;
  double wall = 0, cpu = 0;
  for (int64_t i = from; i < to;) {
    // Made in chunks of about 100,000 rows, then timed.
    batches.clear();
    for (int64_t made = 0; made < 100000 && i < to;) {
      std::vector<AuditEvent>& events = batches.emplace_back();
      for (size_t k = 0; k < batch && i < to; ++k, ++i, ++made) {
        events.push_back(Event(pattern, i));
      }
    }
    auto start = Clock::now();
    double cpu_start = CpuSeconds();
    for (const std::vector<AuditEvent>& events : batches) {
      auto stored = log.AppendBatch(events);
      if (!stored) Die(stored.error().ToString());
      appended += static_cast<int64_t>(events.size());
    }
    wall += Seconds(start);
    cpu += CpuSeconds() - cpu_start;
  }
  rate.per_second = static_cast<double>(to - from) / wall;
  rate.cpu_us = cpu * 1e6 / static_cast<double>(to - from);
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = argc > 1 ? std::atoll(argv[1]) : 10'000'000;
  size_t batch = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 1000;
  std::string dir = fmt::format("{}/audit-bench-{}", argc > 3 ? argv[3] : "/var/tmp", ::getpid());
  std::string pattern_name = argc > 4 ? argv[4] : "jobs";
  if (pattern_name != "jobs" && pattern_name != "spread") {
    Die("the row pattern is 'jobs' or 'spread', not '" + pattern_name + "'");
  }
  const Pattern pattern = pattern_name == "jobs" ? Pattern::kJobs : Pattern::kSpread;
  std::filesystem::create_directories(dir);
  std::string path = dir + "/audit.db";
  std::FILE* loadavg = std::fopen("/proc/loadavg", "r");
  char load[32] = "?";
  if (loadavg) {
    (void)!std::fgets(load, sizeof load, loadavg);
    std::fclose(loadavg);
  }
  std::printf("audit_bench: %s, rows of %s (load %.14s)\n", path.c_str(), pattern_name.c_str(),
              load);
  // A log of a year: the clock moves 3 s per row appended so far (a batch's
  // rows share one time), so time ranges select like they would on a device.
  int64_t appended = 0;
  const auto year_ago = std::chrono::system_clock::now() - std::chrono::hours(24 * 365);
  auto clock = [&] { return year_ago + std::chrono::seconds(3 * appended); };
  auto opened = AuditLog::Open(path, ralph::audit::OpenMode::kCreateIfMissing, {.clock = clock});
  if (!opened) Die(opened.error().ToString());
  AuditLog& log = **opened;

  int64_t next = 0;
  auto start = Clock::now();
  for (; next < 200; ++next) {
    if (!log.Append(Event(pattern, next))) Die("append");
    ++appended;
  }
  std::printf("  Append, one WAL sync per record:            %9.0f records/s\n",
              200 / Seconds(start));
  Rate rate = Grow(log, pattern, next, next + 200000, batch, appended);
  next += 200000;
  std::printf(
      "  AppendBatch of %zu, one WAL sync per batch: %9.0f records/s, %.1f us CPU per "
      "record (target >= 100000/s)\n",
      batch, rate.per_second, rate.cpu_us);
  if (rows > next) {
    Rate grow = Grow(log, pattern, next, rows, batch, appended);
    std::printf("  grown to %ld rows in batches of %zu: %9.0f records/s, %.1f us CPU per record\n",
                static_cast<long>(rows), batch, grow.per_second, grow.cpu_us);
    next = rows;
  }
  std::printf("  database %.0f MiB\n",
              static_cast<double>(std::filesystem::file_size(path)) / (1 << 20));

  std::mt19937 rng(1);
  std::vector<double> job_ms, type_ms, range_ms;
  size_t per_job = 0;
  auto tip = log.Tip();
  for (int i = 0; i < 20; ++i) {
    int64_t job = JobOf(pattern, std::uniform_int_distribution<int64_t>(0, next - 1)(rng));
    auto t = Clock::now();
    auto found = log.List({.subject = fmt::format("job {}", job)});
    job_ms.push_back(Ms(t));
    if (!found) Die(found.error().ToString());
    per_job = found->size();
    t = Clock::now();
    auto typed = log.List({.limit = 100, .type = std::string(kTypes[i % 5])});
    type_ms.push_back(Ms(t));
    if (!typed || typed->size() != 100) Die("type query");
  }
  // An hour somewhere in the year (~1200 rows), all of it and its newest 100.
  size_t per_hour = 0;
  for (int i = 0; i < 20; ++i) {
    int64_t row = std::uniform_int_distribution<int64_t>(0, next - 1)(rng);
    auto since = year_ago + std::chrono::seconds(3 * row);
    auto t = Clock::now();
    auto ranged = log.List({.limit = i % 2 ? 100u : 0u,
                            .since = ralph::audit::FormatAuditTime(since),
                            .until = ralph::audit::FormatAuditTime(since + std::chrono::hours(1))});
    range_ms.push_back(Ms(t));
    if (!ranged) Die(ranged.error().ToString());
    if (i % 2 == 0) per_hour = ranged->size();
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto worst = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  std::printf("  one job's records (%zu of %ld):  median %6.2f ms, max %6.2f ms (target < 50)\n",
              per_job, static_cast<long>(tip ? tip->seq : 0), median(job_ms), worst(job_ms));
  std::printf("  newest 100 of a type:            median %6.2f ms, max %6.2f ms\n", median(type_ms),
              worst(type_ms));
  std::printf("  an hour's range (%zu rows; or its newest 100): median %6.2f ms, max %6.2f ms\n",
              per_hour, median(range_ms), worst(range_ms));
  std::filesystem::remove_all(dir);
  return 0;
}
