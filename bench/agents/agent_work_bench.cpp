// What an agent does inside its sandbox, timed in a sandbox and directly on
// the host in one interleaved run, as ratios (target <= 1.10 each):
//  1. `git clone` of a local repository of 10,000 files (made by the bench);
//  2. `npm ci` from a local npm cache (offline: the cache is filled once,
//     from the npm registry, before the timed runs);
//  3. a C++ compile of this repository's platform library (one g++ per
//     source, serially, the same flags on both sides).
// and, with --image (the agent image), the first output of `claude
// --version` in a fresh sandbox next to the same binary run on the host.
// Then density: how many idle sandboxes, each running `node`, fit in 4 GiB,
// from what each job's cgroup is charged.
//
// The sandbox is `ralph-sandbox run` (every layer on, no network: the work
// is local), the job's workspace bound at /work as ralphd binds it. The
// sandbox's CPU share is two CPUs so that the cgroup limit is not what is
// measured.
//
// usage: agent_work_bench [--runs N] [--idle N] [--image agent.squashfs] SOURCE_DIR
//   SOURCE_DIR: this repository (its platform/ is compiled)
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/cli.h"
#include "tests/support/bench_stats.h"
#include "tests/support/run_program.h"
#include "tests/support/temp_dir.h"

namespace {

using ralph::testing::LoadAverage;
using ralph::testing::Median;
using ralph::testing::ProgramRun;
using ralph::testing::RunProgram;
using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "usage: agent_work_bench [--runs N] [--idle N] [--image FILE] SOURCE_DIR\n"
    "  --runs N      timed runs of each workload on each side (default 5)\n"
    "  --idle N      idle node sandboxes for the density figure (default 20)\n"
    "  --image FILE  the agent image: sandboxes run on it, and claude --version is timed\n"
    "  SOURCE_DIR    this repository (its platform/ is what is compiled)\n";

[[noreturn]] void Die(const std::string& what) {
  fmt::print(stderr, "agent_work_bench: {}\n", what);
  std::exit(1);
}

// Runs argv; its wall time in ms. Dies with its output when it fails.
double Time(const std::vector<std::string>& argv) {
  auto start = Clock::now();
  ProgramRun run = RunProgram(argv);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (run.exit != 0)
    Die(fmt::format("{} failed ({}): {}", fmt::join(argv, " "), run.exit, run.output));
  return ms;
}

void Must(const std::vector<std::string>& argv) {
  Time(argv);
}

struct Sandbox {
  std::string binary;  // ralph-sandbox
  std::string image;   // empty: `base` with the host's /usr and /etc
  std::string base;
  std::string state_dir;

  // `binds`: "SRC:DST" read-write, the first one being the workspace.
  std::vector<std::string> Run(std::vector<std::string> binds, std::vector<std::string> ro_binds,
                               std::vector<std::string> command) const {
    std::vector<std::string> argv = {binary,
                                     "run",
                                     "--no-network",
                                     "--memory",
                                     "4G",
                                     "--cpu-millis",
                                     "2000",
                                     "--pids",
                                     "1024",
                                     "--disk",
                                     "4G",
                                     "--state-dir",
                                     state_dir,
                                     "--env",
                                     "HOME=/work",
                                     "--env",
                                     "PATH=/usr/local/bin:/usr/bin:/bin"};
    if (!image.empty()) {
      argv.insert(argv.end(), {"--image", image});
    } else {
      argv.insert(argv.end(),
                  {"--rootfs", base, "--ro-bind", "/usr:/usr", "--ro-bind", "/etc:/etc"});
    }
    for (const std::string& bind : binds) argv.insert(argv.end(), {"--bind", bind});
    for (const std::string& bind : ro_binds) argv.insert(argv.end(), {"--ro-bind", bind});
    argv.push_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
  }
};

struct Workload {
  std::string name;
  std::vector<std::string> host;
  std::vector<std::string> sandbox;
  std::vector<std::string> reset;  // before each timed run, untimed
  std::vector<double> host_ms = {}, sandbox_ms = {};
};

// A repository of `files` small files in 100 directories, one commit.
void MakeRepository(const std::string& dir, int files) {
  Must({"git", "init", "-q", "--initial-branch=main", dir});
  for (int i = 0; i < 100; ++i) Must({"mkdir", "-p", fmt::format("{}/d{:02}", dir, i)});
  for (int i = 0; i < files; ++i) {
    std::ofstream(fmt::format("{}/d{:02}/f{:05}.txt", dir, i % 100, i))
        << fmt::format("file {}\n", i);
  }
  Must({"git", "-C", dir, "add", "-A"});
  Must({"git", "-C", dir, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit",
        "-q", "-m", "10,000 files"});
}

// A Node project whose dependencies land in `cache` (from the npm registry,
// once; pinned versions, so every run installs the same tree).
void MakeNpmProject(const std::string& dir, const std::string& cache) {
  Must({"mkdir", "-p", dir});
  std::ofstream(dir + "/package.json") << R"({
  "name": "agent-work-bench",
  "version": "1.0.0",
  "private": true,
  "dependencies": {
    "eslint": "8.57.0",
    "express": "4.19.2",
    "lodash": "4.17.21",
    "typescript": "5.4.5"
  }
}
)";
  Must({"npm", "install", "--prefix", dir, "--cache", cache, "--no-audit", "--no-fund",
        "--loglevel=error"});
  // `npm ci` online once more, so that the cache holds what an offline
  // `npm ci` looks up (install alone leaves some of it out).
  Must({"rm", "-rf", dir + "/node_modules"});
  Must({"npm", "ci", "--prefix", dir, "--cache", cache, "--no-audit", "--no-fund",
        "--loglevel=error"});
}

// The memory a launcher's cgroup (its job's, below it) is charged, in
// bytes: cgroup v1's memory hierarchy or cgroup2, under this process's own
// cgroup, where ralph-sandbox makes "ralph-sandbox@PID.START". -1 if not found.
long long CgroupMemory(pid_t launcher) {
  std::ifstream in("/proc/self/cgroup");
  std::string line, v1, v2;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) v2 = "/sys/fs/cgroup" + line.substr(3);
    size_t memory = line.find(":memory:");
    if (memory != std::string::npos) v1 = "/sys/fs/cgroup/memory" + line.substr(memory + 8);
  }
  const bool is_v1 = !v1.empty();
  const std::string parent = is_v1 ? v1 : v2;
  std::error_code ec;
  const std::string prefix = fmt::format("ralph-sandbox@{}.", launcher);
  for (const auto& entry : std::filesystem::directory_iterator(parent, ec)) {
    if (entry.path().filename().string().rfind(prefix, 0) != 0) continue;
    std::ifstream file(entry.path() / (is_v1 ? "memory.usage_in_bytes" : "memory.current"));
    long long bytes = -1;
    file >> bytes;
    return bytes;
  }
  return -1;
}

long long RssBytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      long long kib = 0;
      in >> kib;
      return kib * 1024;
    }
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

// An idle sandbox running node, started in the background; ready once node
// has made `ready_file` in the workspace (ralph-sandbox hands the job's
// output over only at its end). The launcher's pid: SIGTERM ends the
// launcher and its job.
pid_t StartIdle(const std::vector<std::string>& argv, const std::string& ready_file) {
  pid_t pid = fork();
  if (pid < 0) Die("fork");
  if (pid == 0) {
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  // Polls the state it waits for; the launcher's exit is a failure.
  while (access(ready_file.c_str(), F_OK) != 0) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid)
      Die("an idle node sandbox ended before it was ready");
    usleep(10000);
  }
  return pid;
}

// `target`: the ratio the workload must stay under, if it has one.
void Report(const Workload& w, std::optional<double> target) {
  double host = Median(w.host_ms), sandboxed = Median(w.sandbox_ms);
  fmt::print("  {:<30} host {:8.0f} ms   sandbox {:8.0f} ms   ratio {:.3f}{}\n", w.name, host,
             sandboxed, sandboxed / host,
             target ? fmt::format(" (target <= {:.2f})", *target) : std::string());
}

}  // namespace

int main(int argc, char** argv) {
  std::string runs_text = "5", idle_text = "20";
  std::optional<std::string> image;
  std::vector<std::string> operands;
  ralph::cli::Parser parser("agent_work_bench", kUsage);
  parser.Option("--runs", &runs_text);
  parser.Option("--idle", &idle_text);
  parser.Option("--image", &image);
  parser.Operands(&operands);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;
  int runs = std::atoi(runs_text.c_str()), idle = std::atoi(idle_text.c_str());
  if (runs < 1 || idle < 1) return parser.UsageError("--runs and --idle must be at least 1");
  if (operands.size() != 1) return parser.UsageError("give the repository's directory");
  char* absolute = realpath(operands[0].c_str(), nullptr);
  if (!absolute) return parser.UsageError(operands[0] + ": no such directory");
  const std::string source = absolute;
  free(absolute);
  if (access((source + "/platform/src").c_str(), R_OK) != 0) {
    return parser.UsageError(source + " is not this repository (no platform/src)");
  }

  std::string self = argv[0];
  Sandbox sandbox{.binary = self.substr(0, self.rfind('/') + 1) + "ralph-sandbox"};
  if (image) {
    char* absolute_image = realpath(image->c_str(), nullptr);
    if (!absolute_image) return parser.UsageError(*image + ": no such file");
    sandbox.image = absolute_image;
    free(absolute_image);
    image = sandbox.image;
  }
  if (access(sandbox.binary.c_str(), X_OK) != 0) Die(sandbox.binary + ": not found (build it)");

  ralph::testing::TempDir temp("agent-work-bench");
  const std::string top = temp.path(), work = top + "/work", cache = top + "/npm-cache";
  // The sandbox's user (root mapped into its own user namespace) walks
  // into these; mkdtemp made the directory 0700.
  Must({"chmod", "0755", top});
  sandbox.state_dir = top + "/sandbox-state";
  // Without the agent image: an empty root with the merged-/usr links, and
  // the host's /usr and /etc bound on it read-only.
  sandbox.base = top + "/base";
  Must({"mkdir", "-p", sandbox.state_dir, work, sandbox.base + "/usr", sandbox.base + "/etc"});
  for (const char* link : {"bin", "lib", "lib64", "sbin"}) {
    Must({"ln", "-s", fmt::format("usr/{}", link), sandbox.base + "/" + link});
  }
  fmt::print("load average at the start: {}\n", LoadAverage());
  fmt::print("preparing: a repository of 10,000 files; an npm cache from the registry\n");
  MakeRepository(top + "/repo", 10000);
  MakeNpmProject(top + "/npm-seed", cache);
  Must({"cp", top + "/npm-seed/package.json", top + "/npm-seed/package-lock.json", work});
  std::ofstream(work + "/.gitconfig") << "[safe]\n\tdirectory = *\n";
  // The job's root is the host's uid 1<<20 (ralph::sandbox::IdMapping's
  // default), which owns a workspace as ralphd hands it over.
  Must({"chown", "-R", "1048576:1048576", work, cache});

  auto compile = [](const std::string& src, const std::string& out) {
    return std::vector<std::string>{
        "/bin/sh", "-c",
        fmt::format("set -e; mkdir -p {1}; for f in {0}/platform/src/*.cpp; do "
                    "g++ -std=c++20 -O2 -D_GNU_SOURCE "
                    "-I{0}/platform/include -I/usr/include/efivar -c \"$f\" -o {1}/$(basename "
                    "\"$f\" .cpp).o; done",
                    src, out)};
  };
  const std::vector<std::string> npm_ci = {"ci", "--offline", "--no-audit", "--no-fund",
                                           "--loglevel=error"};
  auto npm = [&](const std::string& prefix, const std::string& npm_cache) {
    std::vector<std::string> argv = {"npm", "--prefix", prefix, "--cache", npm_cache};
    argv.insert(argv.end(), npm_ci.begin(), npm_ci.end());
    return argv;
  };

  std::vector<Workload> workloads;
  workloads.push_back(
      {.name = "git clone, 10,000 files",
       // The source belongs to the host's root, not to the job's: both
       // sides trust it by the workspace's .gitconfig (the sandbox's
       // HOME; git's upload-pack does not take -c safe.directory).
       .host = {"env", "HOME=" + work, "git", "clone", "-q", "--no-hardlinks", top + "/repo",
                work + "/clone"},
       .sandbox = sandbox.Run({work + ":/work"}, {top + "/repo:/src"},
                              {"git", "clone", "-q", "--no-hardlinks", "/src", "/work/clone"}),
       .reset = {"rm", "-rf", work + "/clone"}});
  workloads.push_back(
      {.name = "npm ci, local cache",
       .host = npm(work, cache),
       .sandbox = sandbox.Run({work + ":/work", cache + ":/cache"}, {}, npm("/work", "/cache")),
       .reset = {"rm", "-rf", work + "/node_modules"}});
  // The agent image has no compiler: the compile runs on the host's root.
  Sandbox host_root = sandbox;
  host_root.image.clear();
  workloads.push_back({.name = "g++ of platform/, serially",
                       .host = compile(source, work + "/obj"),
                       .sandbox = host_root.Run({work + ":/work"}, {source + ":/src"},
                                                compile("/src", "/work/obj")),
                       .reset = {"rm", "-rf", work + "/obj"}});

  // Interleaved, the sandbox first on even runs and the host first on odd
  // ones, so that a warming cache favours neither.
  for (int run = 0; run < runs; ++run) {
    for (Workload& w : workloads) {
      for (int side = 0; side < 2; ++side) {
        bool sandboxed = (side == 0) == (run % 2 == 0);
        Must(w.reset);
        (sandboxed ? w.sandbox_ms : w.host_ms).push_back(Time(sandboxed ? w.sandbox : w.host));
      }
    }
  }
  fmt::print("median of {} runs each (load average now {}):\n", runs, LoadAverage());
  for (const Workload& w : workloads) Report(w, 1.10);

  if (image) {
    // The host side runs the image's own binary, mounted read-only.
    const std::string mnt = top + "/image";
    Must({"mkdir", "-p", mnt});
    Must({"mount", "-t", "squashfs", "-o", "loop,ro", *image, mnt});
    Workload claude{.name = "claude --version (first output)",
                    .host = {mnt + "/usr/local/bin/claude", "--version"},
                    .sandbox = sandbox.Run({work + ":/work"}, {}, {"claude", "--version"}),
                    .reset = {"true"}};
    for (int run = 0; run < 20; ++run) {
      claude.host_ms.push_back(Time(claude.host));
      claude.sandbox_ms.push_back(Time(claude.sandbox));
    }
    umount2(mnt.c_str(), MNT_DETACH);
    fmt::print("median of 20 runs:\n");
    Report(claude, std::nullopt);
  }

  // Density: N sandboxes, each with an idle node; what each job's cgroup is
  // charged (node, the job's kernel objects, the pages it was first to
  // touch) and the launcher's own RSS, which ralphd does not have (its jobs
  // share one daemon: ralphd_bench measures what it adds per job).
  std::vector<pid_t> jobs;
  for (int i = 0; i < idle; ++i) {
    const std::string ready = fmt::format("ready-{}", i);
    jobs.push_back(
        StartIdle(sandbox.Run({work + ":/work"}, {},
                              {"node", "-e",
                               fmt::format("require('fs').writeFileSync('/work/{}', ''); "
                                           "setInterval(() => {{}}, 1 << 30)",
                                           ready)}),
                  work + "/" + ready));
  }
  std::vector<double> charged_mib, launcher_mib;
  for (pid_t job : jobs) {
    long long charged = CgroupMemory(job), rss = RssBytes(job);
    if (charged < 0 || rss < 0) Die(fmt::format("no cgroup or no process for launcher {}", job));
    charged_mib.push_back(static_cast<double>(charged) / (1 << 20));
    launcher_mib.push_back(static_cast<double>(rss) / (1 << 20));
  }
  for (pid_t job : jobs) kill(job, SIGTERM);
  for (pid_t job : jobs) {
    int status = 0;
    waitpid(job, &status, 0);
  }
  double per_job = Median(charged_mib);
  fmt::print(
      "idle node sandboxes ({}): cgroup memory per job {:.1f} MiB (median; min {:.1f}, "
      "max {:.1f}), {:.0f} fit in 4 GiB; launcher RSS {:.1f} MiB each\n",
      idle, per_job, *std::min_element(charged_mib.begin(), charged_mib.end()),
      *std::max_element(charged_mib.begin(), charged_mib.end()), 4096 / per_job,
      Median(launcher_mib));
  fmt::print("load average at the end: {}\n", LoadAverage());
  return 0;
}
