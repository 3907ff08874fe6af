// A real `ralph-sandbox run` SIGKILLed mid-job leaves its upper volume
// mounted (with the job's files in it) and its cgroups behind; the next
// launcher's start-up sweep must take the volume over (wiped: the next job
// sees none of the dead one's files) and remove the dead launcher's cgroups,
// so that nothing of the killed run is left once the state dir is drained.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/support/run_program.h"

namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// stdout of a shell command, and its exit status.
std::pair<std::string, int> Shell(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return {"", -1};
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  int status = ::pclose(pipe);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

struct Leftovers {
  size_t mounts = 0;   // below the work dir
  size_t loops = 0;    // loop devices backed by a file below the work dir
  size_t cgroups = 0;  // directories of the killed launcher in any hierarchy
};

Leftovers Count(const std::string& work, pid_t launcher) {
  Leftovers found;
  std::istringstream mounts(Read("/proc/self/mounts"));
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string device, target;
    fields >> device >> target;
    if (target.rfind(work + "/", 0) == 0) ++found.mounts;
  }
  if (DIR* dir = ::opendir("/sys/block")) {
    while (dirent* e = ::readdir(dir)) {
      if (std::string(e->d_name).rfind("loop", 0) != 0) continue;
      if (Read(fmt::format("/sys/block/{}/loop/backing_file", e->d_name)).rfind(work + "/", 0) == 0)
        ++found.loops;
    }
    ::closedir(dir);
  }
  // "ralph-sandbox@<pid>.<start>" and the job cgroups below it.
  auto [names, status] = Shell(fmt::format(
      "find /sys/fs/cgroup -mindepth 1 -type d -path '*/ralph-sandbox@{}.*' 2>/dev/null",
      launcher));
  for (char c : names) found.cgroups += c == '\n';
  return found;
}

std::string Show(const Leftovers& l) {
  return fmt::format("mounts={} loops={} cgroups={}", l.mounts, l.loops, l.cgroups);
}

// The pid of the launcher's child running `comm`, or 0. Any of its threads
// may be the parent (the service's spawner thread is).
pid_t ChildNamed(pid_t parent, const std::string& comm) {
  std::string tasks = fmt::format("/proc/{}/task", parent);
  DIR* dir = ::opendir(tasks.c_str());
  if (!dir) return 0;
  pid_t found = 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::istringstream children(Read(fmt::format("{}/{}/children", tasks, e->d_name)));
    pid_t child;
    while (found == 0 && children >> child) {
      if (Read(fmt::format("/proc/{}/comm", child)) == comm + "\n") found = child;
    }
  }
  ::closedir(dir);
  return found;
}

TEST(LauncherCrashTest, KilledLauncherLeavesNothingAfterTheNextRun) {
  ASSERT_EQ(::geteuid(), 0u) << "needs root";
  std::string work = fmt::format("/tmp/ralph-launcher-crash-{}", ::getpid());
  std::string base = work + "/base", state = work + "/state";
  ASSERT_EQ(Shell(fmt::format("mkdir -p {0}/usr {0}/etc {1} && for l in bin lib lib64 sbin; do "
                              "ln -s usr/$l {0}/$l; done",
                              base, state))
                .second,
            0);
  std::vector<std::string> args = {RALPH_SANDBOX_CLI,
                                   "run",
                                   "--no-network",
                                   "--rootfs",
                                   base,
                                   "--ro-bind",
                                   "/usr:/usr",
                                   "--state-dir",
                                   state,
                                   "--",
                                   "/bin/sh",
                                   "-c",
                                   "echo secret > /work/left-behind; exec sleep 60"};
  pid_t launcher = ::ralph::testing::StartProgram(args);
  ASSERT_GE(launcher, 0);
  // Mid-job: the job's PID 1 has exec'd sleep (after writing its file).
  pid_t job = 0;
  for (int i = 0; i < 3000 && job == 0; ++i) {
    job = ChildNamed(launcher, "sleep");
    if (job == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Leftovers running = Count(work, launcher);
  ::kill(launcher, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(launcher, &status, 0), launcher);
  ASSERT_NE(job, 0) << "the launcher never started its job";
  // The job dies with its launcher (parent-death signal).
  for (int i = 0; i < 500 && ::kill(job, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(::kill(job, 0), 0) << "the job outlived its launcher";

  // What the kill left: the volume (mounted, its loop device) and cgroups.
  Leftovers killed = Count(work, launcher);
  EXPECT_GE(running.mounts, 1u) << Show(running);
  EXPECT_GE(running.cgroups, 2u) << Show(running);  // its parent and the job's, per hierarchy
  EXPECT_EQ(killed.mounts, running.mounts) << Show(killed);
  EXPECT_GE(killed.loops, 1u) << Show(killed);
  EXPECT_EQ(killed.cgroups, running.cgroups) << Show(killed);

  // The next run: its job never sees the dead job's files (it takes a new
  // volume, the state dir having only one warm one, which is dirty), and its
  // housekeeping, while its job runs, empties the dead job's volume and
  // removes the dead launcher's cgroups.
  auto [listing, next_status] = Shell(fmt::format(
      "{} run --no-network --rootfs {} --ro-bind /usr:/usr --state-dir {} -- /bin/sh -c "
      "'ls -A /work; test ! -e /work/left-behind && echo clean' 2>&1",
      RALPH_SANDBOX_CLI, base, state));
  EXPECT_EQ(next_status, 0) << listing;
  EXPECT_EQ(listing, "clean\n");
  Leftovers after = Count(work, launcher);
  EXPECT_EQ(after.cgroups, 0u) << Show(after);
  // Two volumes left mounted (warm) for the next runs: the emptied one of
  // the dead job, and the one of this run, which the next run empties.
  EXPECT_EQ(after.mounts, 2u) << Show(after);
  auto [images, ls_status] = Shell(fmt::format("ls {}/images/volumes | grep -c '\\.img$'", state));
  EXPECT_EQ(images, "2\n");
  auto [secrets, find_status] =
      Shell(fmt::format("find {}/images/volumes -name left-behind | wc -l", state));
  EXPECT_EQ(secrets, "0\n");

  // Drained, nothing is left at all (loop devices detach asynchronously).
  EXPECT_EQ(Shell(fmt::format("{} drain --state-dir {}", RALPH_SANDBOX_CLI, state)).second, 0);
  Leftovers drained;
  for (int i = 0; i < 200; ++i) {
    drained = Count(work, launcher);
    if (drained.loops == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(drained.mounts, 0u) << Show(drained);
  EXPECT_EQ(drained.loops, 0u) << Show(drained);
  EXPECT_EQ(drained.cgroups, 0u) << Show(drained);

  // Whatever a failure left, for the next test run's sake.
  Shell(fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r umount -l", work));
  Shell("rm -rf " + work);
}

}  // namespace
