// Unit tests of the pure planning functions and the seccomp compiler.
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/mount.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <fstream>

#include <gtest/gtest.h>

#include "sandbox/plan.h"
#include "sandbox/seccomp.h"

namespace ralph::sandbox {
namespace {

SandboxSpec ValidSpec() {
  SandboxSpec spec;
  spec.base = "/srv/base";
  spec.argv = {"/bin/true"};
  spec.binds = {{"/usr", "/usr", BindAccess::kReadOnly},
                {"/srv/data", "/data", BindAccess::kReadWrite}};
  return spec;
}

JobPaths Paths() {
  return {"/srv/base", "/var/j/disk/upper", "/var/j/disk/work", "/var/j/root", ""};
}

void ExpectInvalid(const SandboxSpec& spec, const std::string& needle) {
  auto result = ValidateSpec(spec);
  ASSERT_FALSE(result) << "expected an error mentioning " << needle;
  EXPECT_EQ(result.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(result.error().message().find(needle), std::string::npos) << result.error().message();
}

TEST(ValidateSpec, AcceptsTheDefaultsWithACommand) {
  EXPECT_TRUE(ValidateSpec(ValidSpec()));
}

// The defaults are real limits: each one non-zero (zero would forbid
// everything) and below what the kernel takes for "no limit" or accepts at
// all, the RAM-charged /tmp fits in the memory limit, one file fits in the
// writable layer, and a spec with them validates.
uint64_t ReadProcNumber(const char* path) {
  std::ifstream in(path);
  uint64_t value = 0;
  in >> value;
  return value;
}

TEST(ValidateSpec, DefaultLimitsAreBounded) {
  Limits limits;
  EXPECT_GT(limits.memory_bytes, 0u);
  EXPECT_LT(limits.memory_bytes, RLIM_INFINITY);
  EXPECT_GT(limits.pids, 0u);
  uint64_t pid_max = ReadProcNumber("/proc/sys/kernel/pid_max");
  ASSERT_GT(pid_max, 0u) << "/proc/sys/kernel/pid_max unreadable";
  EXPECT_LT(limits.pids, pid_max);
  EXPECT_GT(limits.cpu_millis, 0u);
  EXPECT_GE(limits.io_weight, 1u);  // cgroup v2 io.weight is 1..10000
  EXPECT_LE(limits.io_weight, 10000u);
  EXPECT_GT(limits.disk_bytes, 0u);
  EXPECT_GT(limits.tmp_bytes, 0u);
  EXPECT_LE(limits.tmp_bytes, limits.memory_bytes) << "/tmp is charged to the memory limit";
  EXPECT_GT(limits.open_files, 0u);
  uint64_t nr_open = ReadProcNumber("/proc/sys/fs/nr_open");
  ASSERT_GT(nr_open, 0u) << "/proc/sys/fs/nr_open unreadable";
  EXPECT_LE(limits.open_files, nr_open);
  EXPECT_GT(limits.file_size_bytes, 0u);
  EXPECT_LE(limits.file_size_bytes, limits.disk_bytes) << "one file must fit in the upper layer";
  SandboxSpec spec = ValidSpec();
  spec.limits = limits;
  EXPECT_TRUE(ValidateSpec(spec));
}

TEST(ValidateSpec, NamesTheBadField) {
  SandboxSpec spec = ValidSpec();
  spec.base = "relative";
  ExpectInvalid(spec, "base: must be an absolute path");
  spec = ValidSpec();
  spec.argv.clear();
  ExpectInvalid(spec, "argv: the command is empty");
  spec = ValidSpec();
  spec.binds[1].destination = "/data/../etc";
  ExpectInvalid(spec, "binds[1].destination");
  spec = ValidSpec();
  spec.binds[0].destination = "relative";
  ExpectInvalid(spec, "binds[0].destination: must be absolute");
  spec = ValidSpec();
  spec.binds[0].destination = "/proc/sys";
  ExpectInvalid(spec, "reserved");
  spec = ValidSpec();
  spec.binds[0].source = "usr";
  ExpectInvalid(spec, "binds[0].source");
  spec = ValidSpec();
  spec.env = {"NOEQUALS"};
  ExpectInvalid(spec, "env[0]");
  spec = ValidSpec();
  spec.limits.memory_bytes = 1;
  ExpectInvalid(spec, "limits.memory_bytes");
  spec = ValidSpec();
  spec.limits.pids = 0;
  ExpectInvalid(spec, "limits.pids");
  spec = ValidSpec();
  spec.limits.io_weight = 20000;
  ExpectInvalid(spec, "limits.io_weight");
  spec = ValidSpec();
  spec.limits.open_files = 1ull << 30;
  ExpectInvalid(spec, "limits.open_files");
  spec = ValidSpec();
  spec.workspace = "/";
  ExpectInvalid(spec, "workspace");
  spec = ValidSpec();
  spec.base = "/srv/a,b";
  ExpectInvalid(spec, "base");
}

TEST(PlanMounts, OverlayFirstThenProcDevTmpThenBinds) {
  auto plan = PlanMounts(ValidSpec(), Paths());
  ASSERT_TRUE(plan) << plan.error().ToString();
  const auto& ops = plan->ops;
  ASSERT_FALSE(ops.empty());
  EXPECT_EQ(ops[0].fstype, "overlay");
  EXPECT_EQ(ops[0].target, "/var/j/root");
  EXPECT_EQ(ops[0].data,
            "lowerdir=/srv/base,upperdir=/var/j/disk/upper,workdir=/var/j/disk/work,userxattr,"
            "volatile");
  EXPECT_TRUE(ops[0].flags & MS_NOSUID);
  EXPECT_TRUE(ops[0].flags & MS_NODEV);
  auto find = [&](const std::string& target, MountOpKind kind) {
    return std::find_if(ops.begin(), ops.end(),
                        [&](const MountOp& op) { return op.target == target && op.kind == kind; });
  };
  auto proc = find("/var/j/root/proc", MountOpKind::kMount);
  ASSERT_NE(proc, ops.end());
  EXPECT_EQ(proc->data, "hidepid=invisible,subset=pid");
  EXPECT_NE(find("/var/j/root/dev/null", MountOpKind::kBind), ops.end());
  EXPECT_NE(find("/var/j/root/dev/pts", MountOpKind::kMount), ops.end());
  auto tmp = find("/var/j/root/tmp", MountOpKind::kMount);
  ASSERT_NE(tmp, ops.end());
  EXPECT_EQ(tmp->data, "mode=1777,size=67108864");
  // No /sys at all.
  EXPECT_EQ(
      std::count_if(ops.begin(), ops.end(),
                    [](const MountOp& op) { return op.target.find("/sys") != std::string::npos; }),
      0);
  // Binds: read-only by default, read-write only when asked, never suid/dev.
  auto usr = find("/var/j/root/usr", MountOpKind::kSetAttr);
  ASSERT_NE(usr, ops.end());
  EXPECT_EQ(usr->attr_set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  auto data = find("/var/j/root/data", MountOpKind::kSetAttr);
  ASSERT_NE(data, ops.end());
  EXPECT_EQ(data->attr_set, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  EXPECT_LT(find("/var/j/root/data", MountOpKind::kBind), data);
  // The workspace is created in the upper, owned by the job.
  auto work = std::find_if(plan->upper_entries.begin(), plan->upper_entries.end(),
                           [](const UpperEntry& e) { return e.path == "work"; });
  ASSERT_NE(work, plan->upper_entries.end());
  EXPECT_TRUE(work->owned_by_job);
}

TEST(PlanMounts, FullProcAndResolver) {
  SandboxSpec spec = ValidSpec();
  spec.proc_subset_pid = false;
  JobPaths paths = Paths();
  paths.resolv = "/var/j/resolv.conf";
  auto plan = PlanMounts(spec, paths);
  ASSERT_TRUE(plan);
  bool proc = false, resolv = false;
  for (const MountOp& op : plan->ops) {
    if (op.fstype == "proc") proc = op.data == "hidepid=invisible";
    if (op.kind == MountOpKind::kBind && op.target == "/var/j/root/etc/resolv.conf")
      resolv = op.source == "/var/j/resolv.conf";
  }
  EXPECT_TRUE(proc);
  EXPECT_TRUE(resolv);
}

TEST(PlanMounts, RejectsBadJobPaths) {
  JobPaths paths = Paths();
  paths.upper = "/var/j/a,lowerdir=/";
  auto plan = PlanMounts(ValidSpec(), paths);
  ASSERT_FALSE(plan);
  EXPECT_NE(plan.error().message().find("job paths"), std::string::npos);
}

std::string Find(const std::vector<CgroupSetting>& settings, const std::string& file) {
  for (const CgroupSetting& s : settings) {
    if (s.file == file) return s.value;
  }
  return "<absent>";
}

TEST(PlanCgroupSettings, V2) {
  Limits limits;
  limits.cpu_millis = 1500;
  auto settings = PlanCgroupSettings(limits, CgroupVersion::kV2);
  EXPECT_EQ(Find(settings, "memory.max"), "536870912");
  EXPECT_EQ(Find(settings, "memory.swap.max"), "0");
  EXPECT_EQ(Find(settings, "pids.max"), "256");
  EXPECT_EQ(Find(settings, "cpu.max"), "150000 100000");
  EXPECT_EQ(Find(settings, "io.weight"), "default 100");
  for (const CgroupSetting& s : settings) EXPECT_TRUE(s.controller.empty());
}

TEST(PlanCgroupSettings, V1SameLimits) {
  Limits limits;
  limits.memory_bytes = 1ull << 30;
  limits.pids = 100;
  limits.cpu_millis = 250;
  auto settings = PlanCgroupSettings(limits, CgroupVersion::kV1);
  EXPECT_EQ(Find(settings, "memory.limit_in_bytes"), "1073741824");
  EXPECT_EQ(Find(settings, "memory.memsw.limit_in_bytes"), "1073741824");
  EXPECT_EQ(Find(settings, "pids.max"), "100");
  EXPECT_EQ(Find(settings, "cpu.cfs_quota_us"), "25000");
  EXPECT_EQ(Find(settings, "cpu.cfs_period_us"), "100000");
  for (const CgroupSetting& s : settings) EXPECT_FALSE(s.controller.empty()) << s.file;
}

TEST(PlanRlimits, CoreZeroAndLimits) {
  Limits limits;
  limits.open_files = 4096;
  auto rlimits = PlanRlimits(limits);
  auto get = [&](int resource) {
    for (const RlimitSetting& r : rlimits) {
      if (r.resource == resource) return r;
    }
    return RlimitSetting{-1, 0, 0};
  };
  EXPECT_EQ(get(RLIMIT_NOFILE).hard, 4096u);
  EXPECT_EQ(get(RLIMIT_CORE).hard, 0u);
  EXPECT_EQ(get(RLIMIT_NPROC).hard, 256u);
  EXPECT_EQ(get(RLIMIT_FSIZE).hard, 1ull << 30);
}

TEST(SeccompPolicy, NeverAllowsTheDeniedSyscallsUnconditionally) {
  SeccompPolicy policy = DefaultSeccompPolicy();
  EXPECT_EQ(policy.default_errno, EPERM);
  for (const std::string& denied : AlwaysDeniedSyscalls()) {
    for (const SeccompRule& rule : policy.rules) {
      if (rule.syscall == denied) {
        EXPECT_TRUE(!rule.alternatives.empty() || rule.errno_value != 0)
            << denied << " allowed unconditionally";
      }
    }
  }
  for (const char* name :
       {"mount", "ptrace", "bpf", "keyctl", "setns", "io_uring_setup", "init_module",
        "open_by_handle_at", "reboot", "clock_settime", "userfaultfd", "perf_event_open"}) {
    EXPECT_TRUE(std::none_of(policy.rules.begin(), policy.rules.end(), [&](const SeccompRule& r) {
      return r.syscall == name;
    })) << name;
  }
}

TEST(SeccompPolicy, CloneAndUnshareOnlyWithoutNamespaceFlags) {
  SeccompPolicy policy = DefaultSeccompPolicy();
  for (const SeccompRule& rule : policy.rules) {
    if (rule.syscall == "clone" || rule.syscall == "unshare") {
      ASSERT_EQ(rule.alternatives.size(), 1u);
      EXPECT_EQ(rule.alternatives[0].mask & CLONE_NEWUSER, static_cast<uint64_t>(CLONE_NEWUSER));
      EXPECT_EQ(rule.alternatives[0].mask & CLONE_NEWNS, static_cast<uint64_t>(CLONE_NEWNS));
      EXPECT_EQ(rule.alternatives[0].value, 0u);
    }
    if (rule.syscall == "clone3") {
      EXPECT_EQ(rule.errno_value, ENOSYS);
    }
  }
}

TEST(SeccompProgram, CompilesForBothArchitectures) {
  auto x86 = SeccompProgram::Compile(DefaultSeccompPolicy(), AUDIT_ARCH_X86_64);
  ASSERT_TRUE(x86) << x86.error().ToString();
  auto arm = SeccompProgram::Compile(DefaultSeccompPolicy(), AUDIT_ARCH_AARCH64);
  ASSERT_TRUE(arm) << arm.error().ToString();
  EXPECT_GT(x86->instruction_count(), 50u);
  EXPECT_GT(arm->instruction_count(), 50u);
  // aarch64 has no open/stat/fork: skipped there, present on x86_64.
  auto skipped = [](const SeccompProgram& p, const char* name) {
    return std::find(p.skipped().begin(), p.skipped().end(), name) != p.skipped().end();
  };
  EXPECT_TRUE(skipped(*arm, "open"));
  EXPECT_TRUE(skipped(*arm, "fork"));
  EXPECT_FALSE(skipped(*x86, "open"));
  // The programs differ: each checks its own arch (the first load compares
  // the audit arch word).
  EXPECT_EQ(x86->program()->len, x86->instruction_count());
  bool x86_checks_arch = false, arm_checks_arch = false;
  for (size_t i = 0; i < x86->instruction_count(); ++i)
    x86_checks_arch |= x86->program()->filter[i].k == AUDIT_ARCH_X86_64;
  for (size_t i = 0; i < arm->instruction_count(); ++i)
    arm_checks_arch |= arm->program()->filter[i].k == AUDIT_ARCH_AARCH64;
  EXPECT_TRUE(x86_checks_arch);
  EXPECT_TRUE(arm_checks_arch);
}

// The programs the build compiled are exactly what the policy compiles to
// now, for both architectures; anything else is refused.
TEST(SeccompProgram, DefaultIsTheDefaultPolicyCompiledAtBuildTime) {
  for (uint32_t arch : {AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64}) {
    auto built = SeccompProgram::Default(arch);
    ASSERT_TRUE(built) << built.error().ToString();
    auto compiled = SeccompProgram::Compile(DefaultSeccompPolicy(), arch);
    ASSERT_TRUE(compiled) << compiled.error().ToString();
    ASSERT_EQ(built->instruction_count(), compiled->instruction_count()) << std::hex << arch;
    for (size_t i = 0; i < built->instruction_count(); ++i) {
      const sock_filter& a = built->instructions()[i];
      const sock_filter& b = compiled->instructions()[i];
      EXPECT_TRUE(a.code == b.code && a.jt == b.jt && a.jf == b.jf && a.k == b.k)
          << "instruction " << i << " of arch " << std::hex << arch;
    }
    EXPECT_EQ(built->skipped(), compiled->skipped());
    EXPECT_EQ(built->program()->len, built->instruction_count());
  }
  auto native = SeccompProgram::Default(0);
  ASSERT_TRUE(native);
  auto other = SeccompProgram::Default(AUDIT_ARCH_I386);
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(other.error().message().find("no default program for audit arch 0x40000003"),
            std::string::npos)
      << other.error().ToString();
}

TEST(SeccompProgram, RejectsAPolicyThatAllowsADeniedCall) {
  SeccompPolicy policy = DefaultSeccompPolicy();
  policy.rules.push_back({"mount", {}, 0});
  auto program = SeccompProgram::Compile(policy, AUDIT_ARCH_X86_64);
  ASSERT_FALSE(program);
  EXPECT_EQ(program.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(program.error().message().find("mount must never be allowed"), std::string::npos);
}

TEST(SeccompProgram, RejectsUnknownSyscallsAndArchitectures) {
  SeccompPolicy policy = DefaultSeccompPolicy();
  policy.rules.push_back({"no_such_call", {}, 0});
  auto program = SeccompProgram::Compile(policy, AUDIT_ARCH_X86_64);
  ASSERT_FALSE(program);
  EXPECT_NE(program.error().message().find("unknown syscall 'no_such_call'"), std::string::npos);
  auto other = SeccompProgram::Compile(DefaultSeccompPolicy(), AUDIT_ARCH_I386);
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code(), ErrorCode::kUnsupported);
}

TEST(SeccompPolicy, DeniesTerminalInjectionIoctls) {
  SeccompPolicy policy = DefaultSeccompPolicy();
  auto denial = std::find_if(policy.denials.begin(), policy.denials.end(),
                             [](const SeccompArgumentDenial& d) { return d.syscall == "ioctl"; });
  ASSERT_NE(denial, policy.denials.end());
  EXPECT_EQ(denial->index, 1u);
  EXPECT_EQ(denial->errno_value, EPERM);
  for (uint32_t request : {TIOCSTI, TIOCLINUX, TIOCSETD, TIOCCONS})
    EXPECT_NE(std::find(denial->values.begin(), denial->values.end(), request),
              denial->values.end())
        << request;
}

TEST(SeccompProgram, DenialsComeFirstAndCheckTheirOwnArchitecture) {
  // aarch64: ioctl is syscall 29 there (16 on x86_64); the program starts
  // with the denial block for that number.
  auto arm = SeccompProgram::Compile(DefaultSeccompPolicy(), AUDIT_ARCH_AARCH64);
  ASSERT_TRUE(arm) << arm.error().ToString();
  const sock_filter* f = arm->program()->filter;
  EXPECT_EQ(f[0].code, BPF_LD | BPF_W | BPF_ABS);
  EXPECT_EQ(f[0].k, offsetof(seccomp_data, arch));
  EXPECT_EQ(f[1].k, AUDIT_ARCH_AARCH64);
  EXPECT_EQ(f[3].k, 29u);
  EXPECT_EQ(f[4].k, offsetof(seccomp_data, args) + 8);  // low half of args[1]
  EXPECT_EQ(f[5].k, static_cast<uint32_t>(TIOCSTI));
}

TEST(SeccompProgram, RejectsABadDenial) {
  SeccompPolicy policy = DefaultSeccompPolicy();
  policy.denials.push_back({"ioctl", 7, {TIOCSTI}, EPERM});
  auto program = SeccompProgram::Compile(policy, AUDIT_ARCH_X86_64);
  ASSERT_FALSE(program);
  EXPECT_EQ(program.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(program.error().message().find("denial for ioctl: argument 7 of 0..5"),
            std::string::npos)
      << program.error().ToString();
  policy.denials.back() = {"no_such_call", 1, {1}, EPERM};
  auto unknown = SeccompProgram::Compile(policy, AUDIT_ARCH_X86_64);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message().find("denial of unknown syscall 'no_such_call'"),
            std::string::npos);
}

// The compiled program, run by the kernel in a forked child that owns a pty
// as its controlling terminal (where TIOCSTI works without the filter).
TEST(SeccompProgram, KernelDeniesTiocstiEvenWithUpperBitsSet) {
  auto program = SeccompProgram::Compile(DefaultSeccompPolicy(), 0);
  ASSERT_TRUE(program) << program.error().ToString();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Exit codes: 0 all as expected; 10+n: step n went wrong.
    if (::setsid() < 0) ::_exit(10);
    int master = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || ::grantpt(master) != 0 || ::unlockpt(master) != 0) ::_exit(11);
    int tty = ::open(::ptsname(master), O_RDWR);  // becomes the controlling tty
    if (tty < 0 || ::ioctl(tty, TIOCSCTTY, 0) != 0) ::_exit(12);
    char ch = 'x';
    if (::ioctl(tty, TIOCSTI, &ch) != 0) ::_exit(13);  // works before the filter
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ::_exit(14);
    if (LoadSeccompProgram(program->program()) != 0) ::_exit(15);
    if (::ioctl(tty, TIOCSTI, &ch) == 0 || errno != EPERM) ::_exit(16);
    // Raw syscall: the kernel truncates the request to 32 bits.
    if (::syscall(SYS_ioctl, tty, (1ul << 32) | TIOCSTI, &ch) == 0 || errno != EPERM) ::_exit(17);
    int discipline = 0;
    if (::ioctl(tty, TIOCSETD, &discipline) == 0 || errno != EPERM) ::_exit(18);
    winsize size;
    if (::ioctl(tty, TIOCGWINSZ, &size) != 0) ::_exit(19);  // other ioctls still work
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(ExecCandidates, SearchesPathUnlessTheCommandHasASlash) {
  SandboxSpec spec = ValidSpec();
  spec.argv = {"python3"};
  spec.env = {"PATH=/opt/bin:relative:/usr/bin/"};
  EXPECT_EQ(ExecCandidates(spec),
            (std::vector<std::string>{"/opt/bin/python3", "/usr/bin/python3"}));
  spec.argv = {"./run.sh"};
  EXPECT_EQ(ExecCandidates(spec), (std::vector<std::string>{"./run.sh"}));
}

TEST(IdMapLine, MapsRootToTheHostRange) {
  EXPECT_EQ(IdMapLine({1u << 20, 65536}), "0 1048576 65536\n");
}

}  // namespace
}  // namespace ralph::sandbox
