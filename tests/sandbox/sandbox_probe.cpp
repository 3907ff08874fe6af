// sandbox_probe <case> [args]: one escape attempt, run inside a sandbox by
// the escape suite. Exit 0: the attempt was blocked (what must happen).
// Exit 1: the attempt succeeded (an escape). Exit 2: bad usage. Prints what
// it saw on stdout for the test log.
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

namespace {

int Blocked(const char* what, int err) {
  std::printf("blocked: %s: %s\n", what, std::strerror(err));
  return 0;
}
int Escaped(const char* what) {
  std::printf("ESCAPED: %s\n", what);
  return 1;
}
// A call that must fail: returns 0 (blocked) when it did.
int MustFail(const char* what, long rc) {
  if (rc < 0) return Blocked(what, errno);
  return Escaped(what);
}

int ReadFile(const char* path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Blocked(path, errno);
  char buffer[64];
  ssize_t n = read(fd, buffer, sizeof buffer);
  close(fd);
  if (n < 0) return Blocked(path, errno);
  return Escaped(path);
}

int WriteFile(const char* path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Blocked(path, errno);
  ssize_t n = write(fd, "escaped\n", 8);
  close(fd);
  if (n < 0) return Blocked(path, errno);
  return Escaped(path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  std::string c = argv[1];
  const char* arg = argc > 2 ? argv[2] : "";
  if (c == "read") return ReadFile(arg);
  if (c == "write") return WriteFile(arg);
  if (c == "mount") return MustFail("mount tmpfs", mount("tmpfs", "/tmp", "tmpfs", 0, nullptr));
  if (c == "umount") return MustFail("umount /proc", umount2("/proc", MNT_DETACH));
  if (c == "unshare-user") return MustFail("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER));
  if (c == "unshare-mount") return MustFail("unshare(CLONE_NEWNS)", unshare(CLONE_NEWNS));
  if (c == "clone-newuser") {
    // Raw clone with a namespace flag (what unshare(1) / runc would do).
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(static_cast<pid_t>(pid), nullptr, 0);
    return MustFail("clone(CLONE_NEWUSER)", pid);
  }
  if (c == "clone3") {
    struct {
      uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    } args = {CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0};
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) _exit(0);
    return MustFail("clone3(CLONE_NEWUSER)", pid);
  }
  if (c == "setns") {
    int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Blocked("open /proc/self/ns/net", errno);
    return MustFail("setns", setns(fd, 0));
  }
  if (c == "ptrace")
    return MustFail("ptrace attach",
                    ptrace(PTRACE_ATTACH, static_cast<pid_t>(std::atoi(arg)), 0, 0));
  if (c == "process-vm") {
    char local[8], remote[8] = {};
    iovec l{local, sizeof local}, r{remote, sizeof remote};
    return MustFail("process_vm_readv",
                    process_vm_readv(static_cast<pid_t>(std::atoi(arg)), &l, 1, &r, 1, 0));
  }
  if (c == "keyctl") {
    long rc = syscall(SYS_add_key, "user", "ralph", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (rc >= 0) return Escaped("add_key");
    return MustFail("keyctl",
                    syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
  }
  if (c == "bpf") {
    bpf_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    return MustFail("bpf(BPF_MAP_CREATE)", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
  }
  if (c == "perf") {
    perf_event_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    return MustFail("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
  }
  if (c == "raw-socket")
    return MustFail("socket(AF_INET, SOCK_RAW)", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
  if (c == "packet-socket") return MustFail("socket(AF_PACKET)", socket(AF_PACKET, SOCK_RAW, 0));
  if (c == "userfaultfd") return MustFail("userfaultfd", syscall(SYS_userfaultfd, 0));
  if (c == "io-uring") {
    char params[120] = {};
    return MustFail("io_uring_setup", syscall(SYS_io_uring_setup, 8, params));
  }
  if (c == "module") {
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    return MustFail("finit_module", syscall(SYS_finit_module, fd, "", 0));
  }
  if (c == "open-by-handle") {
    // The "shocker" container escape: a guessed handle of the host's root.
    struct {
      unsigned int handle_bytes;
      int handle_type;
      unsigned char f_handle[8];
    } handle = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    return MustFail("open_by_handle_at",
                    syscall(SYS_open_by_handle_at, AT_FDCWD, &handle, O_RDONLY));
  }
  if (c == "chroot") return MustFail("chroot", chroot("/tmp"));
  if (c == "pivot-root") return MustFail("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
  if (c == "reboot") return MustFail("reboot", reboot(RB_POWER_OFF));
  if (c == "personality")
    return MustFail("personality(READ_IMPLIES_EXEC)", personality(READ_IMPLIES_EXEC));
  if (c == "settime") {
    timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    now.tv_sec += 3600;
    if (clock_settime(CLOCK_REALTIME, &now) == 0) return Escaped("clock_settime");
    timeval tv{now.tv_sec, 0};
    if (settimeofday(&tv, nullptr) == 0) return Escaped("settimeofday");
    timex tx;
    std::memset(&tx, 0, sizeof tx);
    tx.modes = ADJ_OFFSET;
    tx.offset = 1000;
    return MustFail("adjtimex", adjtimex(&tx));
  }
  if (c == "sethostname") return MustFail("sethostname", sethostname("escaped", 7));
  if (c == "mknod") {
    if (mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)) == 0) return Escaped("mknod block device");
    return MustFail("mknod char device", mknod("/tmp/mem", S_IFCHR | 0600, makedev(1, 1)));
  }
  if (c == "kill") {
    pid_t pid = static_cast<pid_t>(std::atoi(arg));
    if (kill(pid, SIGKILL) == 0) return Escaped("kill host pid");
    int err = errno;
    // kill(-1) reaches every process this one may signal: only the sandbox.
    kill(-1, SIGTERM);
    return Blocked("kill host pid", err);
  }
  if (c == "x32") {
    // A syscall through the x32 ABI: the filter's arch check must kill us.
    syscall(0x40000000 | SYS_getpid);
    return Escaped("x32 syscall returned");
  }
  if (c == "symlink-escape") {
    // arg: a writable bind-mounted dir; argv[3]: a host path that exists
    // only outside. A symlink must resolve inside the sandbox.
    std::string link = std::string(arg) + "/escape-link";
    std::string target = std::string("/../../../../..") + argv[3];
    if (symlink(target.c_str(), link.c_str()) != 0) {
      std::printf("cannot make the link: %s\n", std::strerror(errno));
      return 2;
    }
    int rc = ReadFile(link.c_str());
    if (rc != 0) return rc;
    std::string dotdot = std::string(arg) + "/../../../../.." + argv[3];
    return ReadFile(dotdot.c_str());
  }
  if (c == "tiocsti") {
    // Terminal injection through the job's pty (StdioMode::kPty). Only
    // meaningful on the controlling terminal: elsewhere the kernel itself
    // refuses TIOCSTI without CAP_SYS_ADMIN, so check that first.
    if (!isatty(0) || tcgetsid(0) != getsid(0)) {
      std::printf("stdin is not this session's controlling terminal\n");
      return 2;
    }
    winsize size;
    if (ioctl(0, TIOCGWINSZ, &size) != 0) {  // other tty ioctls still work
      std::printf("TIOCGWINSZ: %s\n", std::strerror(errno));
      return 2;
    }
    char ch = '\n';
    if (ioctl(0, TIOCSTI, &ch) == 0) return Escaped("TIOCSTI");
    int err = errno;
    // The kernel reads the request as an unsigned int: a filter comparing
    // all 64 bits would miss this one.
    if (syscall(SYS_ioctl, 0, (1ul << 32) | TIOCSTI, &ch) == 0)
      return Escaped("TIOCSTI with the upper 32 bits set");
    int tty = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (tty >= 0 && ioctl(tty, TIOCSTI, &ch) == 0) return Escaped("TIOCSTI on /dev/tty");
    int discipline = 0;  // N_TTY
    if (ioctl(0, TIOCSETD, &discipline) == 0) return Escaped("TIOCSETD");
    char subcode = 6;  // TIOCL_GETSHIFTSTATE
    if (ioctl(0, TIOCLINUX, &subcode) == 0) return Escaped("TIOCLINUX");
    return Blocked("TIOCSTI", err);
  }
  if (c == "fork-bomb") {
    int children = 0;
    for (;;) {
      pid_t pid = fork();
      if (pid < 0) break;
      if (pid == 0) {
        pause();
        _exit(0);
      }
      if (++children > 100000) break;
    }
    std::printf("forked %d\n", children);
    return children < std::atoi(arg) ? 0 : 1;
  }
  if (c == "fd-exhaust") {
    int count = 0;
    while (open("/dev/null", O_RDONLY) >= 0) ++count;
    std::printf("opened %d (errno %s)\n", count, std::strerror(errno));
    return count < std::atoi(arg) ? 0 : 1;
  }
  if (c == "memory-bomb") {
    size_t total = 0;
    for (;;) {
      void* p = mmap(nullptr, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) break;
      std::memset(p, 1, 16 << 20);
      total += 16 << 20;
      if (total >= (size_t{4} << 30)) break;
    }
    std::printf("allocated %zu MiB\n", total >> 20);
    return 1;  // reaching here with 4 GiB touched means no limit
  }
  if (c == "disk-fill") {
    int fd = open(arg, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Blocked("open", errno);
    static char block[1 << 20];
    std::memset(block, 'x', sizeof block);
    uint64_t written = 0;
    int err = 0;
    for (;;) {
      ssize_t n = write(fd, block, sizeof block);
      if (n <= 0) {
        err = errno;
        break;
      }
      written += static_cast<uint64_t>(n);
    }
    std::printf("wrote %llu MiB before %s\n", static_cast<unsigned long long>(written >> 20),
                std::strerror(err));
    close(fd);
    return err == ENOSPC ? 0 : 1;
  }
  if (c == "cpu-hog") {
    // Spins on every CPU for `arg` ms of wall time.
    int ms = std::atoi(arg);
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    unsigned n = std::max(2u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < n; ++i)
      threads.emplace_back([&] {
        uint64_t x = 0;
        while (!stop.load(std::memory_order_relaxed)) x = x * 3 + 1;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        (void)x;
      });
    usleep(static_cast<useconds_t>(ms) * 1000);
    stop = true;
    for (auto& t : threads) t.join();
    return 0;
  }
  if (c == "caps") {
    // Prints the effective capabilities (from /proc/self/status) and euid.
    FILE* f = std::fopen("/proc/self/status", "r");
    char line[256];
    while (f && std::fgets(line, sizeof line, f)) {
      if (std::strncmp(line, "CapEff:", 7) == 0 || std::strncmp(line, "CapPrm:", 7) == 0)
        std::fputs(line, stdout);
    }
    std::printf("euid=%d\n", geteuid());
    return 0;
  }
  if (c == "exec") {
    // Runs argv[2..] and returns its status (to exec the setuid copy).
    execv(argv[2], argv + 2);
    return Blocked("execv", errno);
  }
  if (c == "fds") {
    // Lists open fds other than 0-2 and the one reading the directory.
    int count = 0;
    for (int fd = 3; fd < 1024; ++fd) {
      if (fcntl(fd, F_GETFD) >= 0) {
        char path[64], target[256] = {};
        std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        readlink(path, target, sizeof target - 1);
        std::printf("fd %d -> %s\n", fd, target);
        ++count;
      }
    }
    return count == 0 ? 0 : 1;
  }
  return 2;
}
