// ralph-recovery: the rescue environment's program (recovery/README.md).
// Diagnoses the appliance, acts by itself when the situation is clear
// (--auto), and serves the operator's menu on the serial console (--menu).
#include <fcntl.h>
#include <signal.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>

#include <fmt/format.h>

#include "boot/boot_config.h"
#include "drivers/block_device.h"
#include "drivers/disk.h"
#include "platform/cli.h"
#include "platform/efivar_store.h"
#include "platform/file_io.h"
#include "platform/log.h"
#include "recovery/decide.h"
#include "recovery/menu.h"
#include "recovery/rescue.h"
#include "services/audit/audit_log.h"

namespace ralph::recovery {
namespace {

constexpr const char* kUsage = R"(usage: ralph-recovery [options]

Diagnoses the appliance from RECOVERY (slot states, each slot's content
against its recorded digest, the boot entries, VAR, the factory bundle) and
rescues it: restores a slot from the signed factory bundle, repairs the boot
entries, recreates VAR, exports the logs, reboots into a good slot.

  --auto                 act by itself when the situation is clear (no usable
                         slot and a valid factory bundle: restore A, reboot)
  --menu                 then serve the operator's menu on --console
  --console PATH         the operator's terminal (default: stdin/stdout)
  --factory-bundle PATH  default /usr/share/ralph/factory.rbundle
  --keyring PATH         default /etc/ralph/keyring
  --disk PATH            the appliance disk (default: found by PARTLABEL)
  --audit-db PATH        default /var/lib/ralph/audit.db (only when VAR is mounted)
  --no-reboot            never reboot (tests, inspection)
)";

struct Console {
  FILE* in = stdin;
  FILE* out = stdout;
  void Line(const std::string& text) {
    std::fputs(text.c_str(), out);
    std::fputc('\n', out);
    std::fflush(out);
  }
  // One line of at most 4 x kMaxMenuLine bytes (the rest of a longer one is
  // read and dropped, so it is refused as a whole); nullopt at end of input.
  std::optional<std::string> ReadLine() {
    std::string line;
    bool overflow = false;
    for (;;) {
      int c = std::fgetc(in);
      if (c == EOF) {
        if (line.empty() && !overflow) return std::nullopt;
        break;
      }
      if (c == '\n') break;
      if (line.size() < 4 * kMaxMenuLine) {
        line.push_back(static_cast<char>(c));
      } else {
        overflow = true;
      }
    }
    return line;
  }
};

void Reboot(bool allowed) {
  if (!allowed) {
    LogWarning("--no-reboot: not rebooting");
    return;
  }
  ::sync();
  if (::getpid() == 1) {
    ::reboot(RB_AUTOBOOT);
  } else {
    // ralph-init stops the services (VAR unmounted cleanly) and reboots.
    ::kill(1, SIGTERM);
  }
}

int Run(int argc, char** argv) {
  cli::Parser parser("ralph-recovery", kUsage);
  bool automatic = false, menu = false, no_reboot = false;
  std::string console_path, disk_path;
  RescueConfig config;
  std::string audit_path(audit::kDefaultAuditLogPath);
  parser.Flag("--auto", &automatic);
  parser.Flag("--menu", &menu);
  parser.Flag("--no-reboot", &no_reboot);
  parser.Option("--console", &console_path);
  parser.Option("--factory-bundle", &config.factory_bundle);
  parser.Option("--keyring", &config.keyring);
  parser.Option("--disk", &disk_path);
  parser.Option("--audit-db", &audit_path);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;

  Console console;
  if (!console_path.empty()) {
    // O_NOCTTY: a service must not make the console its controlling
    // terminal (a hang-up or ^C there would then signal it).
    int in_fd = ::open(console_path.c_str(), O_RDONLY | O_NOCTTY | O_CLOEXEC);
    int out_fd = ::open(console_path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (in_fd >= 0) console.in = ::fdopen(in_fd, "r");
    if (out_fd >= 0) console.out = ::fdopen(out_fd, "w");
    if (in_fd < 0 || out_fd < 0 || console.in == nullptr || console.out == nullptr) {
      LogError("{}", Error::FromErrno(fmt::format("opening {}", console_path), errno).ToString());
      return 1;
    }
  }

  auto cmdline = ReadWholeFile("/proc/cmdline");
  config.kernel_cmdline = cmdline ? *cmdline : std::string();
  if (auto record = ReadWholeFile(boot::kEarlyBootRecordPath)) {
    std::map<std::string, std::string> values = boot::ParseRecord(*record);
    config.var_state = values["var"];
    config.var_mounted = !config.var_state.empty() && config.var_state != "tmpfs";
  }
  std::unique_ptr<audit::AuditLog> audit_log;
  if (config.var_mounted) {
    auto opened = audit::AuditLog::Open(audit_path, audit::OpenMode::kCreateIfMissing);
    if (opened) {
      audit_log = std::move(*opened);
      config.audit = audit_log.get();
    } else {
      LogWarning("no audit records this boot: {}", opened.error().ToString());
    }
  } else {
    LogWarning("VAR is not mounted ({}): no audit records this boot",
               config.var_state.empty() ? "early boot left no record" : config.var_state);
  }
  config.release_var = [&audit_log]() { audit_log.reset(); };
  auto store = LibefivarStore::Open();
  if (!store) {
    LogError("{}", store.error().WithContext("opening the EFI variable store").ToString());
    return 1;
  }
  auto layout = disk_path.empty() ? DiscoverApplianceDisk() : ProbeDisk(disk_path);
  if (!layout) {
    LogError("{}", layout.error().WithContext("finding the appliance disk").ToString());
    return 1;
  }
  auto rescue = Rescue::Create(
      **store, *layout, config,
      [](const PartitionInfo& part) -> Result<std::unique_ptr<BlockDeviceInterface>> {
        if (part.device.empty()) {
          return Error::Make(ErrorCode::kNotFound,
                             fmt::format("partition {} has no device node", part.label));
        }
        return std::unique_ptr<BlockDeviceInterface>(
            TRY(BlockDevice::Open(part.device, IoMode::kBuffered)));
      });
  if (!rescue) {
    LogError("{}", rescue.error().ToString());
    return 1;
  }
  auto diagnosis = (*rescue)->Diagnose();
  if (!diagnosis) {
    LogError("diagnosis failed: {}", diagnosis.error().ToString());
    return 1;
  }
  for (const auto& line : DescribeDiagnosis(*diagnosis)) LogInfo("recovery: {}", line);
  if (auto failed =
          (*rescue)->Record("recovery-entered", "RECOVERY",
                            fmt::format("{}", fmt::join(DescribeDiagnosis(*diagnosis), "; ")))) {
    LogWarning("recovery: {}", *failed);
  }
  (*rescue)->AcknowledgeEntry();

  if (automatic) {
    Decision decision = Decide(*diagnosis);
    for (const Action& action : decision.actions) {
      LogInfo("recovery: {}: {}", ActionKindName(action.kind), action.why);
    }
    auto done = (*rescue)->Apply(decision);
    if (!done) {
      LogError("recovery: automatic action failed: {}", done.error().ToString());
    } else {
      for (const auto& line : *done) LogInfo("recovery: {}", line);
      if (decision.wait_for_operator) {
        LogWarning("recovery: waiting for the operator: {}", *decision.wait_for_operator);
      }
      if (!decision.actions.empty() && decision.actions.back().kind == ActionKind::kReboot) {
        LogInfo("recovery: done, rebooting");
        Reboot(!no_reboot);
        return 0;
      }
    }
  }
  if (!menu) return 0;
  MenuIo io;
  io.read_line = [&console]() { return console.ReadLine(); };
  io.write_line = [&console](const std::string& line) { console.Line(line); };
  io.prompt = [&console]() {
    std::fputs("recovery> ", console.out);
    std::fflush(console.out);
  };
  io.reboot = [no_reboot]() { Reboot(!no_reboot); };
  if (RunMenu(**rescue, io) == MenuEnd::kRebooting || console_path.empty()) return 0;
  // A service: exiting would have ralph-init start it again, and with it
  // the automatic actions; the console is gone, so stay idle.
  LogWarning("recovery: {} closed: the menu has ended", console_path);
  for (;;) ::pause();
}

}  // namespace
}  // namespace ralph::recovery

int main(int argc, char** argv) {
  ralph::LogInit("ralph-recovery", ralph::LogSink::kStderr);
  return ralph::recovery::Run(argc, argv);
}
