#include "recovery/rescue.h"

#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/file_io.h"
#include "platform/process.h"
#include "recovery/probe.h"
#include "services/audit/audit_log.h"

namespace ralph::recovery {

namespace fs = std::filesystem;
using boot::Slot;
using boot::SlotName;

namespace {

Result<void> EnsureDir(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Error::Make(ErrorCode::kIo, fmt::format("creating {}: {}", path, ec.message()));
  return {};
}

}  // namespace

Result<std::unique_ptr<Rescue>> Rescue::Create(EfiVarStoreInterface& vars, DiskLayout layout,
                                               RescueConfig config, SlotOpener open_slot) {
  TRY(CheckApplianceLayout(layout));
  return std::unique_ptr<Rescue>(
      new Rescue(vars, std::move(layout), std::move(config), std::move(open_slot)));
}

Result<boot::SlotManager> Rescue::Manager() {
  return boot::SlotManager::Create(*vars_, layout_, config_.kernel_cmdline);
}

VarFacts Rescue::CheckVar() {
  VarFacts facts;
  const PartitionInfo* var = layout_.Find(kPartVar);
  if (var == nullptr) {
    facts.health = VarHealth::kMissing;
    return facts;
  }
  if (config_.var_mounted) {
    // e2fsck on a mounted filesystem refuses (or reports the journal's
    // in-flight state as errors); early boot checked it with e2fsck -p
    // before mounting it on this boot.
    facts.health = VarHealth::kClean;
    facts.detail = fmt::format("mounted on {}; early boot's check: {}", config_.var_mount,
                               config_.var_state.empty() ? "unknown" : config_.var_state);
    return facts;
  }
  if (var->device.empty()) {
    facts.health = VarHealth::kUnusable;
    facts.detail = "the VAR partition has no device node";
    return facts;
  }
  auto run =
      RunProgram({.argv = {config_.e2fsck, "-n", "-f", var->device}, .package = "e2fsprogs"});
  if (!run) {
    // Not knowing is not a reason to erase it.
    facts.health = VarHealth::kErrors;
    facts.detail = run.error().WithContext("running e2fsck -n").ToString();
    return facts;
  }
  facts.health = run->signal != 0 ? VarHealth::kErrors : InterpretCheckOnly(run->exit_status);
  std::string last = run->out.empty() ? run->err : run->out;
  while (!last.empty() && last.back() == '\n') last.pop_back();
  if (auto nl = last.rfind('\n'); nl != std::string::npos) last = last.substr(nl + 1);
  facts.detail = fmt::format("e2fsck -n {}: {}{}{}", var->device, run->Describe(),
                             last.empty() ? "" : ": ", last);
  return facts;
}

Result<Diagnosis> Rescue::Diagnose() {
  Diagnosis diagnosis;
  boot::SlotManager manager = TRY(Manager());
  boot::StatusReport status = TRY_CTX(manager.Status(), "reading the boot state");
  if (status.view.record) {
    diagnosis.record = *status.view.record;
  } else {
    diagnosis.record_problem = status.view.record_error ? status.view.record_error->message()
                                                        : std::string("RalphSlotState is missing");
  }
  diagnosis.entries.needs_repair = status.needs_repair;
  diagnosis.factory = CheckBundle(config_.factory_bundle, config_.keyring, config_.identity);
  for (Slot slot : boot::kAllSlots) {
    const PartitionInfo* part = layout_.Find(slot == Slot::kA ? kPartSystemA : kPartSystemB);
    std::optional<boot::SlotRecord> record;
    if (diagnosis.record) record = diagnosis.record->slot(slot);
    std::unique_ptr<BlockDeviceInterface> device;
    std::string problem;
    auto opened = open_slot_(*part);
    if (opened) {
      device = std::move(*opened);
    } else {
      problem = opened.error().ToString();
    }
    SlotFacts facts = CheckSlotContent(slot, device.get(), problem, record, diagnosis.factory);
    (slot == Slot::kA ? diagnosis.a : diagnosis.b) = std::move(facts);
  }
  diagnosis.var = CheckVar();
  if (diagnosis.record && !diagnosis.record->committed) diagnosis.entry = EntryPath::kNoGoodSlot;
  if (config_.var_mounted) {
    if (auto note = ReadWholeFile(EntryNotePath())) {
      diagnosis.entry = EntryPath::kBootFailures;
      diagnosis.entry_detail = *note;
      while (!diagnosis.entry_detail.empty() && diagnosis.entry_detail.back() == '\n') {
        diagnosis.entry_detail.pop_back();
      }
    }
  }
  last_ = diagnosis;
  return diagnosis;
}

Result<std::string> Rescue::RepairEntries() {
  boot::SlotManager manager = TRY(Manager());
  // OnBoot on a RECOVERY boot is the repair that changes no slot state:
  // entries recreated, duplicates dropped, BootOrder as the record says.
  boot::BootReport report = TRY_CTX(manager.OnBoot(), "repairing the boot entries");
  std::string done = report.written.empty() ? std::string("boot entries already in order")
                                            : fmt::format("boot entries repaired: wrote {}",
                                                          fmt::join(report.written, ", "));
  if (!report.findings.empty()) done += fmt::format(" ({})", fmt::join(report.findings, "; "));
  if (!report.written.empty()) {
    if (auto failed = Record("boot-entries-repaired", "boot", done)) done += "; " + *failed;
  }
  return done;
}

Result<std::string> Rescue::Restore(Slot slot, const std::string& bundle) {
  std::string path = bundle.empty() ? config_.factory_bundle : bundle;
  Diagnosis diagnosis = last_ ? *last_ : TRY(Diagnose());
  BundleFacts facts = path == diagnosis.factory.path
                          ? diagnosis.factory
                          : CheckBundle(path, config_.keyring, config_.identity);
  if (auto restorable = BundleRestorable(diagnosis, facts); !restorable) {
    Record("restore-refused", fmt::format("slot {}", SlotName(slot)), restorable.error().message());
    return std::move(restorable).error();
  }
  boot::SlotManager manager = TRY(Manager());
  ota::InstallOptions options;
  options.source = path;
  options.keyring_path = config_.keyring;
  options.identity = config_.identity;
  options.target = slot;
  // The restored slot gets the tries of a factory slot on a fresh machine:
  // a power cut during its first boot is retried before RECOVERY is back.
  options.tries = boot::kFirstBootTries;
  options.mode = ota::WriteOptions::Mode::kFull;
  options.lock_path = config_.work_dir + "/ota.lock";
  options.status_path = config_.work_dir + "/ota-status.json";
  options.work_dir = config_.work_dir;
  options.audit = config_.audit;
  auto report = ota::Install(options, manager, layout_);
  if (!report) {
    Record("restore-failed", fmt::format("slot {}", SlotName(slot)), report.error().ToString());
    return std::move(report).error().WithContext(
        fmt::format("restoring slot {} from {}", SlotName(slot), path));
  }
  last_.reset();
  std::string done = fmt::format(
      "slot {} restored from {} (version {}, signed by {}): {} bytes written and read back; the "
      "next boot tries it",
      SlotName(slot), path, report->version.ToString(), report->signer.subject,
      report->stats.bytes_written);
  if (auto failed = Record("slot-restored", fmt::format("slot {}", SlotName(slot)), done)) {
    done += "; " + *failed;
  }
  return done;
}

Result<std::string> Rescue::ResetVar() {
  const PartitionInfo* var = layout_.Find(kPartVar);
  if (var == nullptr || var->device.empty()) {
    return Error::Make(ErrorCode::kNotFound, "no VAR partition device to reset");
  }
  // Recorded before: afterwards the log is gone with the filesystem.
  Record("var-reset", "VAR", fmt::format("recreating {} empty", var->device));
  if (config_.var_mounted) {
    config_.audit = nullptr;
    if (config_.release_var) config_.release_var();
    if (::umount(config_.var_mount.c_str()) != 0) {
      return Error::FromErrno(
          fmt::format("unmounting VAR from {} (something still uses it: nothing was erased)",
                      config_.var_mount),
          errno);
    }
    config_.var_mounted = false;
  }
  auto run = RunProgram({.argv = {config_.mke2fs, "-q", "-F", "-t", "ext4", "-L", "VAR", "-E",
                                  "lazy_itable_init=1,lazy_journal_init=1", var->device},
                         .package = "e2fsprogs"});
  if (!run) return std::move(run).error().WithContext("recreating VAR");
  if (!run->ok()) {
    return Error::Make(ErrorCode::kIo, fmt::format("mke2fs {} failed ({}): {}", var->device,
                                                   run->Describe(), run->err));
  }
  last_.reset();
  return fmt::format(
      "VAR ({}) recreated empty: the next boot starts with fresh state and needs a "
      "new pairing",
      var->device);
}

Result<std::string> Rescue::ExportLogs(const std::string& device) {
  std::string mount_point = config_.work_dir + "/export";
  TRY(EnsureDir(mount_point));
  bool mounted = false;
  std::string tried;
  for (const char* type : {"vfat", "ext4"}) {
    if (::mount(device.c_str(), mount_point.c_str(), type, MS_NOSUID | MS_NODEV | MS_NOEXEC,
                nullptr) == 0) {
      mounted = true;
      break;
    }
    tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", type, std::strerror(errno));
  }
  if (!mounted) {
    return Error::Make(ErrorCode::kIo,
                       fmt::format("cannot mount {} as vfat or ext4 ({})", device, tried));
  }
  auto copy = [&]() -> Result<std::string> {
    auto now = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    std::string dir = fmt::format("{}/ralph-logs-{}", mount_point, now);
    TRY(EnsureDir(dir));
    std::vector<std::string> lines;
    if (last_) lines = DescribeDiagnosis(*last_);
    TRY(WriteWholeFile(dir + "/diagnosis.txt", fmt::format("{}\n", fmt::join(lines, "\n"))));
    size_t copied = 0;
    if (config_.var_mounted) {
      std::error_code ec;
      std::string log_dir = config_.var_mount + "/log";
      if (fs::exists(log_dir, ec)) {
        fs::copy(log_dir, dir + "/log",
                 fs::copy_options::recursive | fs::copy_options::skip_symlinks, ec);
        if (ec)
          return Error::Make(ErrorCode::kIo, fmt::format("copying {}: {}", log_dir, ec.message()));
        ++copied;
      }
      std::string audit = config_.var_mount + "/lib/ralph/audit.db";
      if (fs::exists(audit, ec)) {
        fs::copy_file(audit, dir + "/audit.db", ec);
        if (ec)
          return Error::Make(ErrorCode::kIo, fmt::format("copying {}: {}", audit, ec.message()));
        ++copied;
      }
    }
    ::sync();
    return fmt::format("exported the diagnosis{} to {} on {}",
                       copied ? " with the logs and audit log" : " (VAR not readable: no logs)",
                       dir.substr(mount_point.size() + 1), device);
  };
  Result<std::string> done = copy();
  if (::umount(mount_point.c_str()) != 0 && done) {
    return Error::FromErrno(fmt::format("unmounting {}", device), errno);
  }
  if (done) {
    if (auto failed = Record("logs-exported", device, *done)) *done += "; " + *failed;
  }
  return done;
}

Result<std::string> Rescue::CheckReboot(std::optional<Slot> slot) {
  boot::SlotManager manager = TRY(Manager());
  boot::StatusReport status = TRY(manager.Status());
  if (!status.view.record) {
    return Error::Make(ErrorCode::kRefused, "RalphSlotState is unreadable: no slot is known good");
  }
  const boot::SlotState& record = *status.view.record;
  Slot target;
  if (slot) {
    target = *slot;
  } else if (record.committed) {
    target = *record.committed;
  } else {
    for (Slot s : boot::kAllSlots) {
      if (record.slot(s).status == boot::SlotStatus::kTrial && record.slot(s).tries_left > 0) {
        target = s;
        goto found;
      }
    }
    return Error::Make(ErrorCode::kRefused,
                       "no slot is committed or on trial: restore one first (restore a)");
  }
found:
  const boot::SlotRecord& r = record.slot(target);
  if (record.committed == target) {
    return fmt::format("rebooting into the committed slot {}", SlotName(target));
  }
  if (r.status == boot::SlotStatus::kTrial && r.tries_left > 0) {
    return fmt::format("rebooting into slot {} on trial ({} tries left)", SlotName(target),
                       r.tries_left);
  }
  return Error::Make(ErrorCode::kRefused,
                     fmt::format("slot {} is {}, neither committed nor on trial: restore it first",
                                 SlotName(target), boot::SlotStatusName(r.status)));
}

std::string Rescue::EntryNotePath() const {
  // boot::kRecoveryArmedPath is under /var; VAR is mounted at var_mount.
  std::string_view inside = boot::kRecoveryArmedPath;
  inside.remove_prefix(std::string_view("/var").size());
  return config_.var_mount + std::string(inside);
}

void Rescue::AcknowledgeEntry() {
  if (config_.var_mounted) ::unlink(EntryNotePath().c_str());
}

std::optional<std::string> Rescue::Record(const std::string& type, const std::string& subject,
                                          const std::string& details) {
  if (config_.audit == nullptr) return std::nullopt;
  auto appended = config_.audit->Append(
      {.actor = "recovery", .type = type, .subject = subject, .details = {{"what", details}}});
  if (!appended) return fmt::format("not in the audit log: {}", appended.error().ToString());
  return std::nullopt;
}

Result<std::vector<std::string>> Rescue::Apply(const Decision& decision) {
  std::vector<std::string> done;
  for (const Action& action : decision.actions) {
    switch (action.kind) {
      case ActionKind::kRepairEntries: done.push_back(TRY(RepairEntries())); break;
      case ActionKind::kResetVar: done.push_back(TRY(ResetVar())); break;
      case ActionKind::kRestoreSlot:
        done.push_back(TRY(Restore(*action.slot, action.bundle)));
        break;
      case ActionKind::kReboot: done.push_back(TRY(CheckReboot(action.slot))); break;
    }
  }
  return done;
}

}  // namespace ralph::recovery
