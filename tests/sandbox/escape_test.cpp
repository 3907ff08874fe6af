// The escape suite: each case runs a probe inside a sandbox that tries one
// way out; the probe must report the attempt blocked, and the host is
// checked afterwards. (The network cases — metadata, RFC 1918, host
// loopback, direct IP, DNS — live with sandbox/net's tests.)
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "sandbox_fixture.h"

namespace ralph::sandbox::testing {
namespace {

class EscapeTest : public SandboxFixture {
 protected:
  // Runs one probe case; expects it to exit 0 ("blocked").
  JobResult ExpectBlocked(std::vector<std::string> args, SandboxSpec* custom = nullptr) {
    SandboxSpec spec = custom ? *custom : Probe(args);
    JobResult result = RunJob(spec);
    EXPECT_EQ(result.termination, Termination::kExited) << Describe(result);
    EXPECT_EQ(result.exit_code, 0) << Describe(result);
    EXPECT_NE(result.stdout_data.find("blocked"), std::string::npos) << Describe(result);
    return result;
  }
};

TEST_F(EscapeTest, ReadHostFiles) {
  // The host's secret and its real /etc are not in the sandbox's tree.
  ExpectBlocked({"read", host_ + "/secret"});
  ExpectBlocked({"read", "/etc/shadow"});
  ExpectBlocked({"read", "/root/.bash_history"});
}

TEST_F(EscapeTest, WriteOutsideTheUpperLayer) {
  // Bound read-only: the host's /usr.
  ExpectBlocked({"write", "/usr/escape"});
  EXPECT_NE(::access("/usr/escape", F_OK), 0);
  // A path that exists on the host only.
  ExpectBlocked({"write", host_ + "/escape"});
  EXPECT_NE(::access((host_ + "/escape").c_str(), F_OK), 0);
}

TEST_F(EscapeTest, WriteTheBaseImage) {
  // The base's files belong to the host's root: read-only for the job.
  ExpectBlocked({"write", "/base-file"});
  EXPECT_EQ(ReadHostFile(base_ + "/base-file"), "base\n");
  // Writing a new file at / lands in the job's upper layer, never the base.
  JobResult result = RunJob(Spec({"/bin/sh", "-c", "echo x > /new-file && cat /new-file"}));
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_NE(::access((base_ + "/new-file").c_str(), F_OK), 0);
}

TEST_F(EscapeTest, WriteABaseImageFile) {
  // A squashfs base: mounted read-only on the host, read-only inside.
  ASSERT_EQ(::access("/usr/bin/mksquashfs", X_OK), 0)
      << "mksquashfs missing (package squashfs-tools)";
  std::string image = work_ + "/base.squashfs";
  std::string command =
      fmt::format("mksquashfs {} {} -quiet -no-progress >/dev/null", base_, image);
  ASSERT_EQ(std::system(command.c_str()), 0);
  SandboxSpec spec = Probe({"write", "/base-file"});
  spec.base_kind = BaseKind::kImage;
  spec.base = image;
  ExpectBlocked({}, &spec);
  spec = Spec({"/bin/cat", "/base-file"});
  spec.base_kind = BaseKind::kImage;
  spec.base = image;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.stdout_data, "base\n") << Describe(result);
}

TEST_F(EscapeTest, Mount) {
  ExpectBlocked({"mount"});
  ExpectBlocked({"umount"});
}

TEST_F(EscapeTest, NewUserNamespace) {
  ExpectBlocked({"unshare-user"});
  ExpectBlocked({"unshare-mount"});
  ExpectBlocked({"clone-newuser"});
  ExpectBlocked({"clone3"});
}

TEST_F(EscapeTest, Setns) {
  ExpectBlocked({"setns"});
}

TEST_F(EscapeTest, PtraceAHostProcess) {
  // Our own (host) pid: not visible in the job's pid namespace, and ptrace
  // is denied anyway.
  ExpectBlocked({"ptrace", std::to_string(::getpid())});
  ExpectBlocked({"ptrace", "1"});
  ExpectBlocked({"process-vm", "1"});
}

TEST_F(EscapeTest, Keyctl) {
  ExpectBlocked({"keyctl"});
}
TEST_F(EscapeTest, Bpf) {
  ExpectBlocked({"bpf"});
}
TEST_F(EscapeTest, PerfEventOpen) {
  ExpectBlocked({"perf"});
}
TEST_F(EscapeTest, RawAndPacketSockets) {
  ExpectBlocked({"raw-socket"});
  ExpectBlocked({"packet-socket"});
}
TEST_F(EscapeTest, Userfaultfd) {
  ExpectBlocked({"userfaultfd"});
}
TEST_F(EscapeTest, IoUring) {
  ExpectBlocked({"io-uring"});
}
TEST_F(EscapeTest, KernelModules) {
  ExpectBlocked({"module"});
}
TEST_F(EscapeTest, OpenByHandle) {
  ExpectBlocked({"open-by-handle"});
}
TEST_F(EscapeTest, ChrootAndPivotRoot) {
  ExpectBlocked({"chroot"});
  ExpectBlocked({"pivot-root"});
}
TEST_F(EscapeTest, Reboot) {
  ExpectBlocked({"reboot"});
}
TEST_F(EscapeTest, Personality) {
  ExpectBlocked({"personality"});
}

TEST_F(EscapeTest, TerminalInjection) {
  // TIOCSTI / TIOCSETD / TIOCLINUX on the job's own pty (its controlling
  // terminal, where the kernel would allow TIOCSTI): denied by seccomp.
  SandboxSpec spec = Probe({"tiocsti"});
  spec.stdio = StdioMode::kPty;
  JobResult result = ExpectBlocked({}, &spec);
  EXPECT_NE(result.stdout_data.find("blocked: TIOCSTI: Operation not permitted"), std::string::npos)
      << Describe(result);
}

TEST_F(EscapeTest, TimeAndClockChanges) {
  time_t before = ::time(nullptr);
  ExpectBlocked({"settime"});
  // The probe moved the clock an hour ahead had it worked.
  EXPECT_LT(::time(nullptr) - before, 600);
}

TEST_F(EscapeTest, Hostname) {
  char before[256] = {};
  ::gethostname(before, sizeof before - 1);
  ExpectBlocked({"sethostname"});
  char after[256] = {};
  ::gethostname(after, sizeof after - 1);
  EXPECT_STREQ(before, after);
}

TEST_F(EscapeTest, DeviceNodeCreation) {
  ExpectBlocked({"mknod"});
  ExpectBlocked({"read", "/dev/mem"});
  ExpectBlocked({"read", "/dev/kmsg"});
  ExpectBlocked({"read", "/dev/vda"});
}

TEST_F(EscapeTest, ProcKcoreAndProcSys) {
  ExpectBlocked({"read", "/proc/kcore"});
  ExpectBlocked({"write", "/proc/sys/kernel/hostname"});
  ExpectBlocked({"write", "/proc/sysrq-trigger"});
  // Even with the full /proc (subset=pid off), /proc/sys stays the host
  // root's and read-only for the job.
  SandboxSpec spec = Probe({"write", "/proc/sys/kernel/core_pattern"});
  spec.proc_subset_pid = false;
  ExpectBlocked({}, &spec);
  spec = Probe({"read", "/proc/kcore"});
  spec.proc_subset_pid = false;
  ExpectBlocked({}, &spec);
}

TEST_F(EscapeTest, SysIsAbsent) {
  ExpectBlocked({"read", "/sys/kernel/notes"});
  ExpectBlocked({"write", "/sys/fs/cgroup/cgroup.procs"});
}

TEST_F(EscapeTest, SymlinkAndDotDotThroughABindMount) {
  SandboxSpec spec = Probe({"symlink-escape", "/shared", host_ + "/secret"});
  spec.binds.push_back({host_ + "/shared", "/shared", BindAccess::kReadWrite});
  ExpectBlocked({}, &spec);
  // The link the job left is resolved by the host to the host's file: the
  // point is that nothing inside could use it; the host sees a dangling
  // relative climb that it never follows.
  struct stat st;
  EXPECT_EQ(::lstat((host_ + "/shared/escape-link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_F(EscapeTest, SignalHostProcesses) {
  pid_t victim = ::fork();
  ASSERT_GE(victim, 0);
  if (victim == 0) {
    ::pause();
    ::_exit(0);
  }
  ExpectBlocked({"kill", std::to_string(victim)});
  // The host process is still alive.
  EXPECT_EQ(::kill(victim, 0), 0);
  int status;
  EXPECT_EQ(::waitpid(victim, &status, WNOHANG), 0);
  ::kill(victim, SIGKILL);
  ::waitpid(victim, &status, 0);
}

TEST_F(EscapeTest, SetuidBinaryInTheBase) {
  // A setuid-root copy of the probe in the base: exec'd inside it gains no
  // capability and no other user (nosuid, no_new_privs, empty bounding set,
  // and the host's root is not mapped).
  std::string copy = base_ + "/suid-probe";
  std::string command =
      fmt::format("cp {}/sandbox_probe {} && chmod 4755 {}", RALPH_SANDBOX_PROBE_DIR, copy, copy);
  ASSERT_EQ(std::system(command.c_str()), 0);
  JobResult result = RunJob(Probe({"exec", "/suid-probe", "caps"}));
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_NE(result.stdout_data.find("CapEff:\t0000000000000000"), std::string::npos)
      << Describe(result);
  EXPECT_NE(result.stdout_data.find("CapPrm:\t0000000000000000"), std::string::npos)
      << Describe(result);
  EXPECT_NE(result.stdout_data.find("euid=0"), std::string::npos) << Describe(result);
}

TEST_F(EscapeTest, OtherArchitectureSyscalls) {
  if (ralph::arch::Name() != "x86_64") GTEST_SKIP() << "x32 exists only on x86_64";
  JobResult result = RunJob(Probe({"x32"}));
  EXPECT_EQ(result.termination, Termination::kSignaled) << Describe(result);
  EXPECT_EQ(result.signal, SIGSYS) << Describe(result);
}

TEST_F(EscapeTest, NoHostFileDescriptorsInside) {
  // Only stdin/stdout/stderr reach the job (the probe's own dir fd aside).
  JobResult result = RunJob(Probe({"fds"}));
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
}

TEST_F(EscapeTest, ForkBomb) {
  SandboxSpec spec = Probe({"fork-bomb", "64"});
  spec.limits.pids = 32;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  // The host can still fork.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
}

TEST_F(EscapeTest, MemoryBomb) {
  SandboxSpec spec = Probe({"memory-bomb"});
  spec.limits.memory_bytes = 64ull << 20;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.termination, Termination::kSignaled) << Describe(result);
  EXPECT_EQ(result.signal, SIGKILL) << Describe(result);
  EXPECT_GE(result.cgroup.oom_kills, 1u) << Describe(result);
  EXPECT_LE(result.cgroup.memory_peak_bytes, 64ull << 20) << Describe(result);
}

TEST_F(EscapeTest, DiskFill) {
  SandboxSpec spec = Probe({"disk-fill", "/work/fill"});
  spec.limits.disk_bytes = 32ull << 20;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_NE(result.stdout_data.find("No space left on device"), std::string::npos)
      << Describe(result);
  // /tmp is bounded too.
  spec = Probe({"disk-fill", "/tmp/fill"});
  spec.limits.tmp_bytes = 8ull << 20;
  result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
}

TEST_F(EscapeTest, FdExhaustion) {
  JobResult result = RunJob(Probe({"fd-exhaust", "1025"}));
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_NE(result.stdout_data.find("Too many open files"), std::string::npos) << Describe(result);
}

TEST_F(EscapeTest, CpuHogGetsOnlyItsShare) {
  // Spinning on all CPUs for 1 s with a fifth of a CPU: the cgroup's CPU
  // time stays near 0.2 s (bounded here at half the wall time).
  SandboxSpec spec = Probe({"cpu-hog", "1000"});
  spec.limits.cpu_millis = 200;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  ASSERT_GT(result.cgroup.cpu_usage_ns, 0u);
  EXPECT_LT(static_cast<double>(result.cgroup.cpu_usage_ns),
            0.5 * static_cast<double>(result.wall.count()))
      << "cpu " << result.cgroup.cpu_usage_ns << " ns in " << result.wall.count() << " ns";
}

TEST_F(EscapeTest, AnotherSandboxesFiles) {
  // Two jobs alive at once: the second cannot see the first's workspace.
  auto first =
      service_->CreateJob(Spec({"/bin/sh", "-c", "echo mine > /work/private && sleep 30"}));
  ASSERT_TRUE(first);
  ASSERT_TRUE(service_->Run(*first));
  std::string first_file = *service_->WorkspacePath(*first) + "/private";
  for (int i = 0; i < 500 && ::access(first_file.c_str(), F_OK) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  JobResult result = RunJob(Probe({"read", first_file}));
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  result = RunJob(Spec({"/bin/sh", "-c", "cat /work/private"}));
  EXPECT_NE(result.exit_code, 0) << Describe(result);
  ASSERT_TRUE(service_->Kill(*first));
  ASSERT_TRUE(service_->Wait(*first));
  ASSERT_TRUE(service_->Destroy(*first));
}

}  // namespace
}  // namespace ralph::sandbox::testing
