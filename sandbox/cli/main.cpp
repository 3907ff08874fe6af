// ralph-sandbox run [flags] -- command [args...]
// Runs one command in a sandbox (SandboxService with every layer on) and
// exits with its status (128+signal when killed, 124 on timeout).
// ralph-sandbox drain [--state-dir DIR]
// Unmounts the idle upper volumes runs leave mounted for the next run and
// removes the warm nft tables they leave in the netns.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/arch.h"
#include "platform/cli.h"
#include "platform/log.h"
#include "sandbox/service.h"

// The bounds of this executable's code (GNU ld).
extern "C" char __executable_start[], etext[];

namespace {

using ralph::Error;
using ralph::ErrorCode;
using ralph::Result;
namespace sb = ralph::sandbox;

constexpr const char kUsage[] =
    "usage: ralph-sandbox run [flags] -- command [args...]\n"
    "       ralph-sandbox drain [--state-dir DIR]   unmount the idle upper volumes, remove\n"
    "                                               the warm network tables\n"
    "  --rootfs DIR         read-only base directory (default /)\n"
    "  --image FILE         read-only base squashfs/erofs image instead\n"
    "  --ro-bind SRC:DST    bind a host path read-only (repeatable)\n"
    "  --bind SRC:DST       bind a host path read-write (repeatable)\n"
    "  --env NAME=VALUE     environment (repeatable; default PATH only)\n"
    "  --cwd DIR            working directory inside (default /work)\n"
    "  --memory BYTES       memory limit, suffix K/M/G (default 512M)\n"
    "  --pids N             process limit (default 256)\n"
    "  --cpu-millis N       CPU share, 1000 = one CPU (default 1000)\n"
    "  --disk BYTES         upper-layer size (default 2G)\n"
    "  --nofile N           open files (default 1024)\n"
    "  --timeout SECONDS    kill after this long (default none)\n"
    "  --pty                run on a pseudo-terminal\n"
    "  --no-network         only loopback (default: its own veth, default-deny egress)\n"
    "  --allow CIDR[:PORT]  allow egress to an address/CIDR (repeatable)\n"
    "  --allow-domain NAME  resolvable and reachable on 443 (repeatable)\n"
    "  --state-dir DIR      per-job state (default /var/lib/ralph/sandbox)\n"
    "  --events             print the job's connection attempts (allowed, denied) to stderr\n"
    "  --stats              print exit status and resource usage to stderr\n";

Result<uint64_t> ParseSize(std::string_view flag, const std::string& text) {
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (end == text.c_str())
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: '{}' is not a number", flag, text));
  std::string_view suffix(end);
  uint64_t scale = 1;
  if (suffix == "K" || suffix == "k")
    scale = 1ull << 10;
  else if (suffix == "M" || suffix == "m")
    scale = 1ull << 20;
  else if (suffix == "G" || suffix == "g")
    scale = 1ull << 30;
  else if (!suffix.empty())
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: unknown suffix '{}' in '{}'", flag, suffix, text));
  return value * scale;
}

Result<sb::BindMount> ParseBind(std::string_view flag, const std::string& text,
                                sb::BindAccess access) {
  size_t colon = text.find(':');
  if (colon == std::string::npos)
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: '{}' is not SRC:DST", flag, text));
  return sb::BindMount{text.substr(0, colon), text.substr(colon + 1), access};
}

struct Options {
  bool drain = false;
  sb::SandboxSpec spec;
  std::string state_dir = "/var/lib/ralph/sandbox";
  bool stats = false;
  bool events = false;
};

Result<sb::EgressRule> ParseAllow(const std::string& rule) {
  sb::EgressRule egress;
  size_t colon = rule.rfind(':');
  if (colon != std::string::npos && rule.find('.') != std::string::npos) {
    egress.cidr = rule.substr(0, colon);
    egress.port_min = egress.port_max =
        static_cast<uint16_t>(TRY(ParseSize("--allow", rule.substr(colon + 1))));
  } else {
    egress.cidr = rule;
  }
  return egress;
}

// The values of `run` that need converting, checked once parsing is done.
struct RunFlags {
  std::optional<std::string> rootfs, image, memory, pids, cpu_millis, disk, nofile, timeout;
  std::vector<std::pair<std::string, std::string>> binds;  // {"--bind"/"--ro-bind", SRC:DST}
  std::vector<std::string> allow;
  bool pty = false;
  bool no_network = false;
};

Result<void> ApplyRunFlags(const RunFlags& flags, sb::SandboxSpec& spec) {
  if (flags.rootfs && flags.image) {
    return Error::Make(ErrorCode::kInvalidArgument, "--rootfs and --image exclude each other");
  }
  if (flags.rootfs) {
    spec.base = *flags.rootfs;
    spec.base_kind = sb::BaseKind::kDirectory;
  }
  if (flags.image) {
    spec.base = *flags.image;
    spec.base_kind = sb::BaseKind::kImage;
  }
  for (const auto& [flag, text] : flags.binds) {
    spec.binds.push_back(TRY(ParseBind(
        flag, text, flag == "--bind" ? sb::BindAccess::kReadWrite : sb::BindAccess::kReadOnly)));
  }
  if (flags.memory) spec.limits.memory_bytes = TRY(ParseSize("--memory", *flags.memory));
  if (flags.pids) spec.limits.pids = static_cast<uint32_t>(TRY(ParseSize("--pids", *flags.pids)));
  if (flags.cpu_millis) {
    spec.limits.cpu_millis =
        static_cast<uint32_t>(TRY(ParseSize("--cpu-millis", *flags.cpu_millis)));
  }
  if (flags.disk) spec.limits.disk_bytes = TRY(ParseSize("--disk", *flags.disk));
  if (flags.nofile) spec.limits.open_files = TRY(ParseSize("--nofile", *flags.nofile));
  if (flags.timeout)
    spec.timeout = std::chrono::seconds(TRY(ParseSize("--timeout", *flags.timeout)));
  if (flags.pty) spec.stdio = sb::StdioMode::kPty;
  if (flags.no_network) spec.network.enabled = false;
  for (const std::string& rule : flags.allow) spec.network.allow.push_back(TRY(ParseAllow(rule)));
  if (spec.argv.empty()) return Error::Make(ErrorCode::kInvalidArgument, "no command after '--'");
  if (spec.env.empty()) spec.env.push_back("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
  return {};
}

// std::nullopt to go on with `options`; else the exit status (0 after
// --help, 2 after a usage error).
std::optional<int> ParseArgs(int argc, char** argv, Options& options) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string command = args.empty() ? std::string() : args[0];
  std::span<const std::string> rest =
      args.empty() ? std::span<const std::string>() : std::span<const std::string>(args).subspan(1);
  if (command == "drain") {
    options.drain = true;
    ralph::cli::Parser parser("ralph-sandbox drain", kUsage);
    parser.Option("--state-dir", &options.state_dir);
    return parser.Parse(rest);
  }
  if (command != "run") {
    ralph::cli::Parser parser("ralph-sandbox", kUsage);
    std::vector<std::string> words;  // the unknown command, reported below
    parser.Operands(&words);
    if (std::optional<int> exit = parser.Parse(args)) return exit;  // --help
    return parser.UsageError("the commands are 'run' and 'drain'");
  }
  sb::SandboxSpec& spec = options.spec;
  spec.base.assign(1, '/');  // assign(): GCC 12 -Wrestrict false positive on = "/"
  ralph::cli::Parser parser("ralph-sandbox run", kUsage);
  RunFlags flags;
  parser.Option("--rootfs", &flags.rootfs);
  parser.Option("--image", &flags.image);
  parser.Ordered("--ro-bind", &flags.binds);
  parser.Ordered("--bind", &flags.binds);
  parser.Repeated("--env", &spec.env);
  parser.Option("--cwd", &spec.cwd);
  parser.Option("--memory", &flags.memory);
  parser.Option("--pids", &flags.pids);
  parser.Option("--cpu-millis", &flags.cpu_millis);
  parser.Option("--disk", &flags.disk);
  parser.Option("--nofile", &flags.nofile);
  parser.Option("--timeout", &flags.timeout);
  parser.Flag("--pty", &flags.pty);
  parser.Flag("--no-network", &flags.no_network);
  parser.Repeated("--allow", &flags.allow);
  parser.Repeated("--allow-domain", &spec.network.allowed_domains);
  parser.Option("--state-dir", &options.state_dir);
  parser.Flag("--stats", &options.stats);
  parser.Flag("--events", &options.events);
  parser.Operands(&spec.argv);
  if (std::optional<int> exit = parser.Parse(rest)) return exit;
  if (auto applied = ApplyRunFlags(flags, spec); !applied) {
    return parser.UsageError(applied.error().message());
  }
  return std::nullopt;
}

// Maps the launcher's whole code at once (MADV_POPULATE_READ, Linux 5.14;
// a no-op before): one call instead of a page fault at the first touch of
// every 64 KiB of it, which the run's threads would otherwise take one by
// one (a fault is expensive in a VM). The pages are in the page cache after
// the first run; this only fills the page tables.
void PrefaultCode() {
  constexpr int kPopulateRead = 22;  // MADV_POPULATE_READ, not in glibc 2.36's headers
  auto start = reinterpret_cast<uintptr_t>(__executable_start) & ~uintptr_t{4095};
  auto end = reinterpret_cast<uintptr_t>(etext);
  if (end > start) ::madvise(reinterpret_cast<void*>(start), end - start, kPopulateRead);
}

// --events: each connection attempt of the job, as the network service
// reports it, one line on stderr.
class StderrEvents final : public sb::NetEventSinkInterface {
 public:
  void OnNetEvent(const sb::NetEvent& event) override {
    std::string_view protocol = event.protocol == sb::Protocol::kTcp   ? "tcp"
                                : event.protocol == sb::Protocol::kUdp ? "udp"
                                                                       : "ip";
    std::string destination = event.port != 0
                                  ? fmt::format("{} port {}", event.destination, event.port)
                                  : event.destination;
    ralph::LogLine(ralph::LogLevel::kInfo,
                   fmt::format("network: {} {} {} ({})",
                               event.verdict == sb::NetVerdict::kAllowed ? "allowed" : "denied",
                               protocol, destination, event.reason));
  }
};

Result<int> Run(const Options& options) {
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  auto t0 = Clock::now();
  // The network service says which nft table clean-up path it uses (debug:
  // tables owned by its socket; warning: the fallback sweep) and which stale
  // tables it removed; a launcher prints all but the debug line.
  sb::NetworkServiceConfig network_config;
  network_config.log = [](ralph::LogLevel level, const std::string& message) {
    if (level != ralph::LogLevel::kDebug) ralph::LogLine(level, message);
  };
  // One job, then exit: the forwarding policy and the hold on the kernel's
  // netfilter hooks live in warm tables that the next run reuses (`drain`
  // removes them), so no run patches the kernel's static keys.
  network_config.service_tables = sb::ServiceTables::kWarm;
  // The job's connection events are collected only for --events: without
  // it neither an NFLOG listener nor log rules.
  network_config.report_events = options.events;
  StderrEvents events;
  // A job that may reach nothing past the host needs no conntrack or NAT.
  network_config.expect_egress = sb::JobHasEgress(options.spec.network);
  // The network service starts (warm tables; the NFLOG listener only for
  // --events) and the job's nft table is made ready in Run, while the child
  // is being cloned: no thread of its own, whose cross-CPU wake-up alone
  // costs more than it would overlap.
  std::unique_ptr<sb::NetworkProviderInterface> network =
      sb::MakeNetworkProvider(network_config, options.events ? &events : nullptr);
  // Owner pid and start time in the name: the next launcher's housekeeping
  // removes the cgroups of one that was killed (SweepDeadOwnerCgroups).
  std::string name = sb::OwnedCgroupName("ralph-sandbox");
  auto cgroups = TRY(sb::DetectCgroups(name));
  sb::ServiceOptions service_options;
  // Shared by every run: the upper-layer template images are made once.
  service_options.state_dir = options.state_dir;
  service_options.name = name;
  service_options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
  // One job, then exit: its veth goes with its network namespace, in the
  // kernel's time (as bwrap's netns does).
  service_options.network_teardown = sb::NetworkTeardown::kWithNamespace;
  // Its upper volume stays mounted for the next launcher (up to 4 on the
  // state dir; `ralph-sandbox drain` unmounts them): no loop attach, mount
  // and unmount per run. It is left as the job left it: the next launcher
  // takes a clean one first and wipes this one while its own job runs
  // (Housekeep below), or wipes it before using it.
  service_options.max_shared_volumes = 4;
  service_options.max_pooled_volumes = 0;  // one job: nothing to pool it for
  // The sweeps and the previous run's wipe happen while the job runs.
  service_options.deferred_housekeeping = true;
  std::unique_ptr<sb::SandboxService> service =
      TRY(sb::SandboxService::Create(service_options, std::move(cgroups), std::move(network)));
  if (service->landlock_abi() == 0)
    ralph::LogWarning(
        "landlock is not available in this kernel: skipped (namespaces, caps and seccomp still "
        "apply)");
  auto t1 = Clock::now();
  sb::JobId id = TRY(service->CreateJob(options.spec));
  auto t2 = Clock::now();
  TRY(service->Run(id));
  auto t3 = Clock::now();
  if (auto housekept = service->Housekeep(); !housekept)
    ralph::LogWarning("{}", housekept.error().ToString());
  sb::JobResult result = TRY(service->Wait(id));
  auto t4 = Clock::now();
  TRY(service->Destroy(id));
  auto t5 = Clock::now();
  int cgroup_version = service->cgroup_version() == sb::CgroupVersion::kV2 ? 2 : 1;
  int landlock_abi = service->landlock_abi();
  service.reset();
  auto t6 = Clock::now();
  std::fwrite(result.stdout_data.data(), 1, result.stdout_data.size(), stdout);
  std::fflush(stdout);
  std::fwrite(result.stderr_data.data(), 1, result.stderr_data.size(), stderr);
  if (options.stats) {
    std::fprintf(stderr,
                 "ralph-sandbox: %s exit=%d signal=%d wall=%.3fms cpu=%.3fms max_rss=%ldKiB "
                 "cgroup_mem_peak=%llu "
                 "oom_kills=%llu dropped=%llu landlock_abi=%d cgroup=v%d\n"
                 "ralph-sandbox: ms: service %.2f create %.2f run %.2f wait %.2f destroy %.2f "
                 "service-teardown %.2f\n",
                 std::string(sb::TerminationName(result.termination)).c_str(), result.exit_code,
                 result.signal, result.wall.count() / 1e6,
                 static_cast<double>(result.cgroup.cpu_usage_ns) / 1e6, result.usage.ru_maxrss,
                 static_cast<unsigned long long>(result.cgroup.memory_peak_bytes),
                 static_cast<unsigned long long>(result.cgroup.oom_kills),
                 static_cast<unsigned long long>(result.output_dropped_bytes), landlock_abi,
                 cgroup_version, ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t4, t5),
                 ms(t5, t6));
  }
  switch (result.termination) {
    case sb::Termination::kExited: return result.exit_code;
    case sb::Termination::kTimedOut: return 124;
    default: return 128 + result.signal;
  }
}

}  // namespace

int main(int argc, char** argv) {
  PrefaultCode();
  ralph::LogInit("ralph-sandbox", ralph::LogSink::kStderr);
  Options parsed;
  if (std::optional<int> exit = ParseArgs(argc, argv, parsed)) return *exit;
  Options* options = &parsed;
  if (options->spec.base_kind == sb::BaseKind::kDirectory && options->spec.base == "/")
    ralph::LogWarning("no --rootfs given: the host's / is the read-only base");
  if (options->drain) {
    auto drained = sb::UnmountIdleVolumes(options->state_dir + "/images");
    if (!drained) {
      ralph::LogError("{}", drained.error().ToString());
      return 1;
    }
    auto tables = sb::RemoveWarmNetworkTables();
    if (!tables) {
      ralph::LogError("{}", tables.error().ToString());
      return 1;
    }
    return 0;
  }
  auto status = Run(*options);
  if (!status) {
    ralph::LogError("{}", status.error().ToString());
    return 125;
  }
  return *status;
}
