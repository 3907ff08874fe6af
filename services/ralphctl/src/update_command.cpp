// `ralphctl update ...`: install a signed bundle into the inactive slot
// (services/ota/installer.h) with a progress bar, and report the last
// install's progress/result.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "platform/efivar_store.h"
#include "platform/log.h"
#include "services/audit/audit_log.h"
#include "services/ota/installer.h"
#include "services/ota/outcome.h"
#include "services/ota/progress.h"
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {
namespace {

constexpr std::string_view kUsage =
    R"(usage: ralphctl update <subcommand> [options]

subcommands:
  install FILE|URL            verify a signed bundle and write it to the inactive
                              slot, then arm a trial boot of it (https:// only
                              for URLs; resumes dropped downloads)
  status [--json]             phase, bytes, rate and ETA of the running or last
                              install, and its result; and what became of the
                              last installed update (trial pending, committed,
                              or rolled back), kept on VAR across reboots
  reconcile                   settle the last update's outcome from the slot
                              state (run once per boot by ralph-init)

install options:
  --keyring DIR|FILE          trusted release certificates (default /etc/ralph/keyring)
  --crl FILE                  revocation list to check the signer against
  --ca FILE                   CA bundle for the HTTPS server (default: system)
  --allow-downgrade           install below the anti-rollback minimum (recorded in
                              the audit log first; refused when it cannot be)
  --tries N                   trial boots before falling back (default 1)
  --full                      write every chunk (no adaptive skipping)
  --target A|B                only when booted from RECOVERY: the slot to write
  --product NAME              this device's product (default ralphos)
  --efivars DIR               use a directory as the EFI variable store
  --disk IMAGE|DEV            the appliance disk (default: found by PARTLABEL)
  --cmdline TEXT              the kernel command line (default: /proc/cmdline)
  --status-file PATH          where progress is published (default
                              /run/ralph/ota-status.json)
  --lock PATH                 the install lock (default /run/ralph/ota.lock)
  --work-dir DIR              staging for the kernel image (default /run/ralph)
  --update-record PATH        the last update's record (default
                              /var/lib/ralph/ota/last-update.json; with --efivars
                              none unless given)
  --audit-db PATH             the audit log (default /var/lib/ralph/audit.db)
)";

constexpr OptionSpec kOptions[] = {
    {"--keyring", true},
    {"--crl", true},
    {"--ca", true},
    {"--allow-downgrade", false},
    {"--tries", true},
    {"--full", false},
    {"--target", true},
    {"--product", true},
    {"--efivars", true},
    {"--disk", true},
    {"--cmdline", true},
    {"--status-file", true},
    {"--lock", true},
    {"--work-dir", true},
    {"--json", false},
    {"--help", false},
    {"--update-record", true},
    {"--audit-db", true},
};

constexpr std::string_view kDefaultStatusFile = "/run/ralph/ota-status.json";

std::atomic<bool> g_cancel{false};

void OnInterrupt(int) {
  g_cancel.store(true);
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", bytes, units[unit]);
}

std::string ProgressLine(const ota::InstallStatus& s) {
  double fraction = s.bytes_total ? static_cast<double>(s.bytes_done) / s.bytes_total : 0;
  constexpr int kWidth = 30;
  int filled = static_cast<int>(fraction * kWidth);
  std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
  std::string eta = s.eta_seconds ? fmt::format("ETA {:.0f}s", *s.eta_seconds) : "ETA --";
  return fmt::format("[{}] {:3.0f}% {:<14} {}/s {}", bar, fraction * 100,
                     ota::InstallPhaseName(s.phase), HumanBytes(s.rate_bytes_per_second), eta);
}

// The update record (services/ota/outcome.h) belongs to the machine's own
// state: with a directory EFI store (tests, development) there is none
// unless a path is given.
std::string UpdateRecordPath(const ParsedArgs& args) {
  if (auto path = args.Value("--update-record")) return *path;
  if (args.Value("--efivars")) return "";
  return std::string(ota::kDefaultUpdateRecordPath);
}

// The slot manager of the running system (or of --efivars/--disk/--cmdline).
Result<boot::SlotManager> OpenSlotManager(const Invocation& invocation, const ParsedArgs& args,
                                          std::unique_ptr<LibefivarStore>* store) {
  if (auto dir = args.Value("--efivars")) TRY(UseEfivarsDirectory(invocation, *dir));
  *store = TRY_CTX(LibefivarStore::Open(), "opening the EFI variable store");
  DiskLayout layout =
      TRY_CTX(args.Value("--disk") ? ProbeDisk(*args.Value("--disk")) : DiscoverApplianceDisk(),
              "finding the appliance disk");
  std::string cmdline = args.Value("--cmdline").value_or(ReadProcCmdline());
  return boot::SlotManager::Create(**store, layout, cmdline);
}

// Reads the update record and settles its outcome from the slot state,
// persisting a change. nullopt when there is no record.
Result<std::optional<ota::UpdateRecord>> SettleRecord(const Invocation& invocation,
                                                      const ParsedArgs& args,
                                                      const std::string& path, bool* changed) {
  *changed = false;
  auto record = ota::ReadUpdateRecord(path);
  if (!record) {
    if (record.error().code() == ErrorCode::kNotFound) return std::optional<ota::UpdateRecord>();
    return record.error();
  }
  if (record->outcome != ota::UpdateOutcome::kPendingTrial) return std::optional(*record);
  std::unique_ptr<LibefivarStore> store;
  boot::SlotManager manager = TRY(OpenSlotManager(invocation, args, &store));
  boot::StatusReport report = TRY_CTX(manager.Status(), "reading the slot state");
  if (!report.view.record) return std::optional(*record);  // no state: cannot settle yet
  auto settled = ota::SettleOutcome(*record, *report.view.record);
  if (!settled) return std::optional(*record);
  // Audit first, then settle the record: a crash in between audits the
  // outcome again on the next boot rather than never. An unusable audit log
  // does not keep the outcome from being recorded and reported.
  std::string audit_path =
      args.Value("--audit-db").value_or(std::string(audit::kDefaultAuditLogPath));
  auto audited = [&]() -> Result<void> {
    auto log = TRY(audit::AuditLog::Open(audit_path, audit::OpenMode::kCreateIfMissing));
    bool rolled_back = settled->outcome == ota::UpdateOutcome::kRolledBack;
    TRY(log->Append(
        {.actor = "ota",
         .type = rolled_back ? "update-rolled-back" : "update-committed",
         .subject = fmt::format("slot {}", boot::SlotName(settled->target)),
         .details = nlohmann::json::parse(ota::UpdateRecordToJson(*settled), nullptr, false)}));
    return {};
  }();
  if (!audited) LogWarning("update outcome not in the audit log: {}", audited.error().ToString());
  TRY_CTX(ota::WriteUpdateRecord(path, *settled), "recording the update's outcome");
  *changed = true;
  return std::optional(*settled);
}

int Reconcile(const Invocation& invocation, const ParsedArgs& args) {
  const std::string command = "update reconcile";
  std::string path = UpdateRecordPath(args);
  if (path.empty()) return UsageError(command, "--update-record is needed with --efivars");
  bool changed = false;
  auto record = SettleRecord(invocation, args, path, &changed);
  if (!record) return Failed(command, record.error());
  if (!*record) return kExitOk;
  const ota::UpdateRecord& r = **record;
  // The console line is the record of the event for people; a rollback is
  // an error of the update, not of this boot.
  if (changed && r.outcome == ota::UpdateOutcome::kRolledBack) {
    LogError("{}", r.summary);
  } else if (changed) {
    LogInfo("{}", r.summary);
  }
  fmt::print("{}\n", r.summary);
  return kExitOk;
}

int Install(const Invocation& invocation, const ParsedArgs& args) {
  const std::string command = "update install";
  if (args.positional.size() != 2) return UsageError(command, "needs one FILE or URL");
  ota::InstallOptions options;
  options.source = args.positional[1];
  options.keyring_path = args.Value("--keyring").value_or("/etc/ralph/keyring");
  options.crl_path = args.Value("--crl").value_or("");
  options.https.ca_file = args.Value("--ca").value_or("");
  options.https.cancel = &g_cancel;
  options.cancel = &g_cancel;
  options.downgrade = args.Has("--allow-downgrade") ? ota::DowngradeOverride::kAllow
                                                    : ota::DowngradeOverride::kRefuse;
  options.mode =
      args.Has("--full") ? ota::WriteOptions::Mode::kFull : ota::WriteOptions::Mode::kAdaptive;
  if (auto tries = args.Value("--tries")) {
    int n = std::atoi(tries->c_str());
    if (n < 1 || n > boot::kMaxTries || std::to_string(n) != *tries) {
      return UsageError(command, fmt::format("--tries {} is not 1..{}", *tries, boot::kMaxTries));
    }
    options.tries = static_cast<uint8_t>(n);
  }
  if (auto target = args.Value("--target")) {
    auto slot = boot::ParseSlot(*target);
    if (!slot) return UsageError(command, slot.error().message());
    options.target = *slot;
  }
  if (auto product = args.Value("--product")) options.identity.product = *product;
  options.status_path = args.Value("--status-file").value_or(std::string(kDefaultStatusFile));
  if (auto lock = args.Value("--lock")) options.lock_path = *lock;
  if (auto work = args.Value("--work-dir")) options.work_dir = *work;

  if (auto dir = args.Value("--efivars")) {
    if (auto use = UseEfivarsDirectory(invocation, *dir); !use) return Failed(command, use.error());
  }
  auto store = LibefivarStore::Open();
  if (!store) return Failed(command, store.error().WithContext("opening the EFI variable store"));
  Result<DiskLayout> layout =
      args.Value("--disk") ? ProbeDisk(*args.Value("--disk")) : DiscoverApplianceDisk();
  if (!layout) return Failed(command, layout.error().WithContext("finding the appliance disk"));
  std::string cmdline = args.Value("--cmdline").value_or(ReadProcCmdline());
  auto manager = boot::SlotManager::Create(**store, *layout, cmdline);
  if (!manager) return Failed(command, manager.error());

  bool tty = ::isatty(STDERR_FILENO);
  ota::InstallPhase last_phase = ota::InstallPhase::kIdle;
  options.on_progress = [&](const ota::InstallStatus& s) {
    if (tty) {
      fmt::print(stderr, "\r{}\x1b[K", ProgressLine(s));
      if (s.phase == ota::InstallPhase::kDone || s.phase == ota::InstallPhase::kFailed) {
        fmt::print(stderr, "\n");
      }
    } else if (s.phase != last_phase) {
      fmt::print(stderr, "{}\n", ProgressLine(s));
    }
    last_phase = s.phase;
  };
  struct sigaction action {};
  action.sa_handler = OnInterrupt;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);

  // Install events go to the audit log. An unusable log does not stop an
  // ordinary install (it is reported and the install goes on), but an
  // override must be recorded, so then the install is refused.
  std::string audit_path =
      args.Value("--audit-db").value_or(std::string(audit::kDefaultAuditLogPath));
  auto audit_log = audit::AuditLog::Open(audit_path, audit::OpenMode::kCreateIfMissing);
  if (audit_log) {
    options.audit = audit_log->get();
  } else if (options.downgrade == ota::DowngradeOverride::kAllow) {
    return Failed(command, audit_log.error().WithContext(
                               "downgrade override refused: the audit log cannot be opened"));
  } else {
    LogWarning("installing without audit records: {}", audit_log.error().ToString());
  }

  auto report = ota::Install(options, *manager, *layout);
  if (!report) return Failed(command, report.error());
  if (std::string record_path = UpdateRecordPath(args); !record_path.empty()) {
    // The slot is installed and armed either way; without the record only
    // the later report of its outcome is missing, so this is not fatal.
    auto recorded = ota::WriteUpdateRecord(
        record_path,
        ota::PendingUpdate(report->version.ToString(), report->target, options.source));
    if (!recorded) LogError("recording the update: {}", recorded.error().ToString());
  }
  for (const std::string& note : report->notes) LogWarning("{}", note);
  fmt::print(
      "installed {} into slot {} (signed by {}): {} written, {} already in place, {:.1f} s; "
      "the next boot tries it\n",
      report->version.ToString(), boot::SlotName(report->target), report->signer.subject,
      HumanBytes(report->stats.bytes_written), HumanBytes(report->stats.bytes_skipped),
      report->seconds);
  return kExitOk;
}

int Status(const Invocation& invocation, const ParsedArgs& args) {
  const std::string command = "update status";
  std::optional<ota::UpdateRecord> last;
  if (std::string record_path = UpdateRecordPath(args); !record_path.empty()) {
    bool changed = false;
    auto settled = SettleRecord(invocation, args, record_path, &changed);
    if (!settled) return Failed(command, settled.error());
    last = *settled;
  }
  std::string path = args.Value("--status-file").value_or(std::string(kDefaultStatusFile));
  auto status = ota::ReadStatusFile(path);
  if (!status && status.error().code() != ErrorCode::kNotFound) {
    return Failed(command, status.error());
  }
  ota::InstallStatus s = status ? *status : ota::InstallStatus{};
  // A status left by a process that died mid-install is not "running".
  bool stale = s.phase != ota::InstallPhase::kDone && s.phase != ota::InstallPhase::kFailed &&
               s.phase != ota::InstallPhase::kIdle && s.pid > 0 && ::kill(s.pid, 0) != 0 &&
               errno == ESRCH;
  if (stale) {
    s.phase = ota::InstallPhase::kFailed;
    s.error = fmt::format("the installing process {} died (interrupted install)", s.pid);
  }
  if (args.Has("--json")) {
    if (!last) {
      fmt::print("{}\n", ota::StatusToJson(s));
      return kExitOk;
    }
    // The install status object, plus "last_update" (outcome.h).
    auto json = nlohmann::json::parse(ota::StatusToJson(s), nullptr, false);
    if (json.is_discarded() || !json.is_object()) {
      return Failed(command, Error::Make(ErrorCode::kInternal, "install status is not JSON"));
    }
    json["last_update"] = nlohmann::json::parse(ota::UpdateRecordToJson(*last), nullptr, false);
    fmt::print("{}\n", json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return kExitOk;
  }
  std::string last_line = last ? fmt::format("last update: {}\n", last->summary) : "";
  if (!status) {
    fmt::print("no update has been installed since boot\n{}", last_line);
    return kExitOk;
  }
  fmt::print("phase:    {}\nsource:   {}\nversion:  {}\ntarget:   slot {}\n",
             ota::InstallPhaseName(s.phase), s.source, s.version, s.target_slot);
  fmt::print("progress: {}\nwritten:  {} (skipped {} already in place)\n", ProgressLine(s),
             HumanBytes(s.bytes_written), HumanBytes(s.bytes_skipped));
  if (!s.error.empty()) fmt::print("error:    {}\n", s.error);
  fmt::print("{}", last_line);
  return kExitOk;
}

}  // namespace

int RunUpdateCommand(const Invocation& invocation, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("update", args, kOptions, kUsage, parsed)) {
    return *exit;
  }
  const std::string& verb = parsed.positional[0];
  if (verb == "install") return Install(invocation, parsed);
  if (verb == "status") return Status(invocation, parsed);
  if (verb == "reconcile") return Reconcile(invocation, parsed);
  return UsageError("update", fmt::format("unknown subcommand '{}'", verb));
}

}  // namespace ralph::ralphctl
