// `ralphctl boot ...`: the slot manager (boot/slot_manager.h) from the
// command line.
#include <algorithm>
#include <charconv>
#include <cstdio>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "platform/efivar_store.h"
#include "platform/load_option.h"
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {
namespace {

using boot::BootTarget;
using boot::Outcome;
using boot::Slot;
using boot::SlotManager;
using boot::StatusReport;
using nlohmann::json;

constexpr std::string_view kUsage =
    R"(usage: ralphctl boot <subcommand> [options]

subcommands:
  status                      the slots, the record and the firmware's boot entries
  mark-good                   commit the booted slot (after a healthy trial boot)
  mark-bad [A|B]              mark a slot bad (default: the booted one)
  mark-active A|B [--tries N] [--allow-downgrade]
                              try a slot on the next boot, N times (default 1)
  repair                      recreate missing Boot#### entries, fix BootOrder,
                              re-initialise a missing or corrupt record
  arm-recovery                boot RECOVERY next
  begin-write A|B --version V [--allow-downgrade]
                              low level, for tools that write a slot themselves
                              (the OTA writer calls the library): mark the slot
                              `writing` before its first byte
  finish-write A|B --version V --digest SHA256 [--tries N] [--allow-downgrade]
                              low level: the slot is written and verified; try it

options:
  --efivars DIR               use a directory as the EFI variable store
                              (sets EFIVARFS_PATH for libefivar)
  --disk IMAGE|DEV            the appliance disk (default: found by PARTLABEL)
  --cmdline TEXT              the kernel command line (default: /proc/cmdline)
  --json                      machine-readable output
)";

constexpr OptionSpec kOptions[] = {
    {"--efivars", true}, {"--disk", true},  {"--cmdline", true},          {"--json", false},
    {"--tries", true},   {"--help", false}, {"--allow-downgrade", false}, {"--version", true},
    {"--digest", true},
};

std::string Hex4(uint16_t n) {
  return fmt::format("{:04X}", n);
}

std::string EntryKindName(boot::EntryKind kind) {
  switch (kind) {
    case boot::EntryKind::kOurs: return "ours";
    case boot::EntryKind::kForeign: return "foreign";
    case boot::EntryKind::kGarbled: return "garbled";
  }
  return "?";
}

json OptionalNumber(const std::optional<uint16_t>& n) {
  return n ? json(*n) : json(nullptr);
}

json StatusJson(const StatusReport& status) {
  const boot::FirmwareView& view = status.view;
  json out;
  out["booted"] = {
      {"target", status.booted.target ? json(BootTargetName(*status.booted.target)) : json()},
      {"how", status.booted.how}};
  out["disk"] = status.disk.empty() ? json() : json(status.disk);
  out["record_error"] = view.record_error ? json(view.record_error->message()) : json();
  if (view.record) {
    const boot::SlotState& record = *view.record;
    out["committed"] = record.committed ? json(SlotName(*record.committed)) : json();
    out["minimum_version"] = record.minimum_version.ToString();
    json slots = json::object();
    for (Slot slot : boot::kAllSlots) {
      const boot::SlotRecord& r = record.slot(slot);
      const boot::BootEntry* entry = view.Find(TargetOf(slot));
      slots[std::string(SlotName(slot))] = {{"state", SlotStatusName(r.status)},
                                            {"tries_left", r.tries_left},
                                            {"version", r.version.ToString()},
                                            {"digest", DigestToHex(r.digest)},
                                            {"entry", entry ? json(entry->number) : json()}};
    }
    out["slots"] = slots;
  } else {
    out["committed"] = json();
    out["slots"] = json();
  }
  const boot::BootEntry* recovery = view.Find(BootTarget::kRecovery);
  out["recovery_entry"] = recovery ? json(recovery->number) : json();
  out["boot_order"] = view.boot_order;
  out["boot_next"] = OptionalNumber(view.boot_next);
  out["boot_current"] = OptionalNumber(view.boot_current);
  json entries = json::array();
  for (const auto& [number, entry] : view.entries) {
    json e = {{"number", number},
              {"name", BootEntryName(number)},
              {"kind", EntryKindName(entry.kind)},
              {"target", entry.target ? json(BootTargetName(*entry.target)) : json()},
              {"note", entry.note}};
    if (entry.option) {
      e["description"] = entry.option->description;
      e["file"] = entry.option->file;
      Result<std::string> path = FormatDevicePath(entry.option->device_path);
      e["device_path"] = path ? json(*path) : json();
    }
    entries.push_back(e);
  }
  out["entries"] = entries;
  out["needs_repair"] = status.needs_repair;
  out["repair_writes"] = status.repair_writes;
  return out;
}

void PrintStatus(const StatusReport& status) {
  const boot::FirmwareView& view = status.view;
  fmt::print("booted:     {} ({})\n",
             status.booted.target ? BootTargetName(*status.booted.target) : "unknown",
             status.booted.how);
  fmt::print("disk:       {}\n",
             status.disk.empty() ? "none (Boot#### entries cannot be created)" : status.disk);
  if (view.record_error) {
    fmt::print("record:     CORRUPT: {}\n", view.record_error->message());
  } else if (!view.record) {
    fmt::print("record:     missing (not provisioned; `ralphctl boot repair`)\n");
  }
  if (view.record) {
    const boot::SlotState& record = *view.record;
    fmt::print("committed:  {}    minimum version: {}\n\n",
               record.committed ? SlotName(*record.committed) : "none",
               record.minimum_version.ToString());
    fmt::print("{:<9} {:<8} {:<6} {:<12} {:<18} {}\n", "slot", "state", "tries", "version",
               "digest", "entry");
    for (Slot slot : boot::kAllSlots) {
      const boot::SlotRecord& r = record.slot(slot);
      const boot::BootEntry* entry = view.Find(TargetOf(slot));
      fmt::print("{:<9} {:<8} {:<6} {:<12} {:<18} {}\n", SlotName(slot), SlotStatusName(r.status),
                 r.tries_left, r.version.ToString(),
                 r.digest == Sha256Digest{} ? "-" : DigestToHex(r.digest).substr(0, 16),
                 entry ? BootEntryName(entry->number) : "MISSING");
    }
  }
  const boot::BootEntry* recovery = view.Find(BootTarget::kRecovery);
  fmt::print("{:<9} {:<8} {:<6} {:<12} {:<18} {}\n\n", "RECOVERY", "", "", "", "",
             recovery ? BootEntryName(recovery->number) : "MISSING");
  std::vector<std::string> order;
  for (uint16_t n : view.boot_order) order.push_back(Hex4(n));
  fmt::print("BootOrder:   {}\n",
             order.empty() ? "(none)" : fmt::format("{}", fmt::join(order, ",")));
  fmt::print("BootNext:    {}\n", view.boot_next ? Hex4(*view.boot_next) : "(none)");
  fmt::print("BootCurrent: {}\n\n", view.boot_current ? Hex4(*view.boot_current) : "(none)");
  fmt::print("entries:\n");
  for (const auto& [number, entry] : view.entries) {
    std::string what = entry.kind == boot::EntryKind::kOurs
                           ? fmt::format("RalphOS {}", BootTargetName(*entry.target))
                           : fmt::format("{}: {}", EntryKindName(entry.kind), entry.note);
    fmt::print("  {}  {:<22} {}\n", BootEntryName(number),
               entry.option ? fmt::format("\"{}\"", entry.option->description) : "", what);
  }
  if (status.needs_repair.empty()) {
    fmt::print("\nconsistent: nothing to repair\n");
  } else {
    fmt::print("\nneeds repair (`ralphctl boot repair`):\n");
    for (const std::string& finding : status.needs_repair) fmt::print("  - {}\n", finding);
  }
}

int PrintOutcome(std::string_view verb, const Outcome& outcome, bool as_json) {
  if (as_json) {
    json out = {{"verb", verb}, {"findings", outcome.findings}, {"written", outcome.written}};
    fmt::print("{}\n", out.dump(2));
    return kExitOk;
  }
  for (const std::string& finding : outcome.findings) fmt::print("  - {}\n", finding);
  if (outcome.written.empty()) {
    fmt::print("{}: no change (nothing written)\n", verb);
  } else {
    fmt::print("{}: wrote {}\n", verb, fmt::join(outcome.written, ", "));
  }
  return kExitOk;
}

}  // namespace

int RunBootCommand(const Invocation& invocation, std::span<const std::string> args) {
  constexpr std::string_view kName = "boot";
  Result<ParsedArgs> parsed = ParseArgs(args, kOptions);
  if (!parsed) return UsageError(kName, parsed.error().message());
  if (parsed->Has("--help")) {
    fmt::print("{}", kUsage);
    return kExitOk;
  }
  if (parsed->positional.empty()) return UsageError(kName, "missing subcommand");
  const std::string verb = parsed->positional[0];
  std::vector<std::string> operands(parsed->positional.begin() + 1, parsed->positional.end());
  const std::string command = fmt::format("boot {}", verb);

  // Validate the whole command line before touching anything.
  static constexpr std::string_view kVerbs[] = {"status",      "mark-good",   "mark-bad",
                                                "mark-active", "repair",      "arm-recovery",
                                                "begin-write", "finish-write"};
  if (std::find(std::begin(kVerbs), std::end(kVerbs), verb) == std::end(kVerbs)) {
    return UsageError(kName, fmt::format("unknown subcommand \"{}\"", verb));
  }
  bool activates = verb == "mark-active" || verb == "finish-write";
  bool writes = verb == "begin-write" || verb == "finish-write";
  if (parsed->Has("--tries") && !activates) {
    return UsageError(command, "--tries goes with mark-active and finish-write only");
  }
  if (parsed->Has("--allow-downgrade") && !activates && !writes) {
    return UsageError(command,
                      "--allow-downgrade goes with mark-active, begin-write and "
                      "finish-write only");
  }
  if ((parsed->Has("--version") && !writes) ||
      (parsed->Has("--digest") && verb != "finish-write")) {
    return UsageError(command,
                      "--version goes with begin-write/finish-write, --digest with "
                      "finish-write");
  }
  size_t max_operands = verb == "mark-active" || verb == "mark-bad" || writes ? 1 : 0;
  if (operands.size() > max_operands) {
    return UsageError(command, fmt::format("unexpected argument \"{}\"", operands[max_operands]));
  }
  std::optional<Slot> slot;
  if (!operands.empty()) {
    Result<Slot> parsed_slot = boot::ParseSlot(operands[0]);
    if (!parsed_slot) return UsageError(command, parsed_slot.error().message());
    slot = *parsed_slot;
  }
  if ((verb == "mark-active" || writes) && !slot) {
    return UsageError(command, "which slot? (A or B)");
  }
  boot::SlotVersion version;
  if (writes) {
    std::optional<std::string> text = parsed->Value("--version");
    if (!text) return UsageError(command, "--version is required");
    Result<boot::SlotVersion> parsed_version = boot::SlotVersion::Parse(*text);
    if (!parsed_version) return UsageError(command, parsed_version.error().message());
    version = *parsed_version;
  }
  Sha256Digest digest{};
  if (verb == "finish-write") {
    std::optional<std::string> text = parsed->Value("--digest");
    if (!text) return UsageError(command, "--digest is required");
    Result<Sha256Digest> parsed_digest = ParseSha256Hex(*text);
    if (!parsed_digest) return UsageError(command, parsed_digest.error().message());
    digest = *parsed_digest;
  }
  boot::DowngradePolicy downgrade = parsed->Has("--allow-downgrade")
                                        ? boot::DowngradePolicy::kAllow
                                        : boot::DowngradePolicy::kRefuse;
  uint8_t tries = 1;
  if (std::optional<std::string> text = parsed->Value("--tries")) {
    int value = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
    if (ec != std::errc() || end != text->data() + text->size() || value < 1 ||
        value > boot::kMaxTries) {
      return UsageError(command, fmt::format("--tries: expected a number from 1 to {}, got \"{}\"",
                                             boot::kMaxTries, *text));
    }
    tries = static_cast<uint8_t>(value);
  }
  bool as_json = parsed->Has("--json");

  if (std::optional<std::string> dir = parsed->Value("--efivars")) {
    Result<void> use = UseEfivarsDirectory(invocation, *dir);
    if (!use) return Failed(command, use.error());
  }
  Result<std::unique_ptr<LibefivarStore>> store = LibefivarStore::Open();
  if (!store) return Failed(command, store.error().WithContext("opening the EFI variable store"));

  std::optional<DiskLayout> layout;
  if (std::optional<std::string> disk = parsed->Value("--disk")) {
    Result<DiskLayout> probed = ProbeDisk(*disk);
    if (!probed) return Failed(command, probed.error().WithContext("--disk " + *disk));
    layout = std::move(*probed);
  } else {
    Result<DiskLayout> found = DiscoverApplianceDisk();
    if (found) {
      layout = std::move(*found);
    } else if (verb != "status") {
      fmt::print(stderr,
                 "ralphctl {}: warning: no appliance disk ({}); Boot#### entries cannot be "
                 "created (pass --disk)\n",
                 command, found.error().message());
    }
  }
  std::string cmdline =
      parsed->Value("--cmdline") ? *parsed->Value("--cmdline") : ReadProcCmdline();
  Result<SlotManager> manager = SlotManager::Create(**store, std::move(layout), cmdline);
  if (!manager) return Failed(command, manager.error());

  if (verb == "status") {
    Result<StatusReport> status = manager->Status();
    if (!status) return Failed(command, status.error());
    if (as_json) {
      fmt::print("{}\n", StatusJson(*status).dump(2));
    } else {
      PrintStatus(*status);
    }
    return kExitOk;
  }
  Result<Outcome> outcome = Error::Make(ErrorCode::kInternal, "unreachable");
  if (verb == "mark-good") {
    outcome = manager->MarkGood();
  } else if (verb == "mark-bad") {
    outcome = slot ? manager->MarkBad(*slot) : manager->MarkBadBooted();
  } else if (verb == "mark-active") {
    outcome = manager->MarkActive(*slot, tries, downgrade);
  } else if (verb == "begin-write") {
    outcome = manager->BeginWrite(*slot, version, downgrade);
  } else if (verb == "finish-write") {
    outcome = manager->FinishWrite(*slot, version, digest, tries, downgrade);
  } else if (verb == "repair") {
    outcome = manager->Repair();
  } else if (verb == "arm-recovery") {
    outcome = manager->ArmRecovery();
  }
  if (!outcome) return Failed(command, outcome.error());
  return PrintOutcome(verb, *outcome, as_json);
}

}  // namespace ralph::ralphctl
