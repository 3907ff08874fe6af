#include "recovery/decide.h"

#include <fmt/format.h>

#include <cctype>

namespace ralph::recovery {

using boot::Slot;
using boot::SlotName;
using boot::SlotStatus;

std::string_view SlotContentName(SlotContent content) {
  switch (content) {
    case SlotContent::kMatches: return "matches its recorded digest";
    case SlotContent::kUnverified: return "an image, unverified (no digest recorded)";
    case SlotContent::kMismatch: return "does NOT match its recorded digest";
    case SlotContent::kNotAnImage: return "holds no system image";
    case SlotContent::kUnreadable: return "cannot be read";
  }
  return "?";
}

std::string_view VarHealthName(VarHealth health) {
  switch (health) {
    case VarHealth::kClean: return "clean";
    case VarHealth::kErrors: return "has filesystem errors";
    case VarHealth::kUnusable: return "unusable (no filesystem e2fsck can check)";
    case VarHealth::kMissing: return "missing (no partition labelled VAR)";
  }
  return "?";
}

VarHealth InterpretCheckOnly(int exit_status) {
  if (exit_status == 0) return VarHealth::kClean;
  // Errors found (4), even when the check then had to stop (12): a repair
  // may still save what is there, so nothing is erased by itself.
  if (exit_status & 4) return VarHealth::kErrors;
  // An operational error alone: no superblock, nothing e2fsck can read as
  // ext4.
  if (exit_status == 8) return VarHealth::kUnusable;
  // 1/2 (corrected: -n corrects nothing, but a journal replay may be
  // reported so), 16 (usage), 32 (cancelled), 128 (library error): not
  // knowing is not a reason to erase it.
  return VarHealth::kErrors;
}

std::string_view BundleHealthName(BundleHealth health) {
  switch (health) {
    case BundleHealth::kValid: return "valid";
    case BundleHealth::kMissing: return "missing";
    case BundleHealth::kInvalid: return "INVALID";
    case BundleHealth::kIncompatible: return "not for this device";
  }
  return "?";
}

std::string_view EntryPathName(EntryPath path) {
  switch (path) {
    case EntryPath::kUnknown: return "operator or firmware boot menu";
    case EntryPath::kNoGoodSlot: return "no slot is committed (BootOrder fell through)";
    case EntryPath::kBootFailures: return "the committed slot failed to boot repeatedly";
  }
  return "?";
}

std::string_view ActionKindName(ActionKind kind) {
  switch (kind) {
    case ActionKind::kRepairEntries: return "repair boot entries";
    case ActionKind::kResetVar: return "factory-reset VAR";
    case ActionKind::kRestoreSlot: return "restore slot";
    case ActionKind::kReboot: return "reboot";
  }
  return "?";
}

bool SlotUsable(const Diagnosis& diagnosis, Slot slot) {
  const SlotFacts& facts = diagnosis.slot(slot);
  if (!facts.record || facts.record->status != SlotStatus::kGood) return false;
  return facts.content == SlotContent::kMatches || facts.content == SlotContent::kUnverified;
}

std::optional<Slot> BootableSlot(const Diagnosis& diagnosis) {
  if (diagnosis.record && diagnosis.record->committed &&
      SlotUsable(diagnosis, *diagnosis.record->committed)) {
    return diagnosis.record->committed;
  }
  for (Slot slot : boot::kAllSlots) {
    if (SlotUsable(diagnosis, slot)) return slot;
  }
  return std::nullopt;
}

Result<void> BundleRestorable(const Diagnosis& diagnosis, const BundleFacts& bundle) {
  switch (bundle.health) {
    case BundleHealth::kValid: break;
    case BundleHealth::kMissing:
      return Error::Make(ErrorCode::kNotFound, fmt::format("no bundle at {}", bundle.path));
    case BundleHealth::kInvalid:
      return Error::Make(ErrorCode::kVerificationFailed,
                         fmt::format("bundle {} refused: {}", bundle.path, bundle.detail));
    case BundleHealth::kIncompatible:
      return Error::Make(ErrorCode::kRefused,
                         fmt::format("bundle {} refused: {}", bundle.path, bundle.detail));
  }
  if (!diagnosis.record) {
    // The writer records the slot it writes in RalphSlotState; without a
    // record it cannot, and the anti-rollback minimum is unknown.
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("cannot restore: {} (boot a slot, or repair the boot state, "
                                   "to re-initialise it)",
                                   diagnosis.record_problem));
  }
  if (bundle.version < diagnosis.record->minimum_version) {
    return Error::Make(
        ErrorCode::kRefused,
        fmt::format("bundle {} is version {}, below the anti-rollback minimum {}", bundle.path,
                    bundle.version.ToString(), diagnosis.record->minimum_version.ToString()));
  }
  return {};
}

namespace {

// The factory image was already written to `slot` and failed there: the
// record holds the bundle's version and digest, and the slot is bad.
// Restoring it again would loop (restore, fail, RECOVERY, restore...).
bool FactoryImageFailedIn(const Diagnosis& diagnosis, Slot slot) {
  const SlotFacts& facts = diagnosis.slot(slot);
  return facts.record && facts.record->status == SlotStatus::kBad &&
         facts.record->version == diagnosis.factory.version &&
         facts.record->digest == diagnosis.factory.rootfs_sha256;
}

}  // namespace

Decision Decide(const Diagnosis& diagnosis) {
  Decision decision;
  if (diagnosis.var.health == VarHealth::kUnusable) {
    decision.actions.push_back(
        {ActionKind::kResetVar, std::nullopt, "",
         fmt::format("VAR is {}: recreated empty ({})", VarHealthName(diagnosis.var.health),
                     diagnosis.var.detail)});
  }
  if (!diagnosis.entries.needs_repair.empty() && diagnosis.record) {
    decision.actions.push_back({ActionKind::kRepairEntries, std::nullopt, "",
                                fmt::format("boot entries need repair: {}",
                                            fmt::join(diagnosis.entries.needs_repair, "; "))});
  }
  std::optional<Slot> bootable = BootableSlot(diagnosis);
  if (bootable) {
    // A usable slot is not a situation recovery resolves by itself: it may
    // be exactly what keeps failing (the boot-failure counter), or the
    // operator came here on purpose.
    std::string why =
        diagnosis.entry == EntryPath::kBootFailures
            ? fmt::format(
                  "slot {} is intact but failed to boot repeatedly: restore, reset VAR, "
                  "or reboot, as the operator decides",
                  SlotName(*bootable))
            : fmt::format("slot {} is usable: nothing to do by itself", SlotName(*bootable));
    decision.wait_for_operator = std::move(why);
    return decision;
  }
  if (FactoryImageFailedIn(diagnosis, Slot::kA)) {
    decision.wait_for_operator = fmt::format(
        "no usable slot, and the factory image {} already failed in slot A: restore from "
        "operator media",
        diagnosis.factory.version.ToString());
    return decision;
  }
  if (auto restorable = BundleRestorable(diagnosis, diagnosis.factory); !restorable) {
    decision.wait_for_operator = fmt::format(
        "no usable slot, and the factory bundle cannot be "
        "used: {}; waiting for operator media",
        restorable.error().message());
    return decision;
  }
  decision.actions.push_back(
      {ActionKind::kRestoreSlot, Slot::kA, diagnosis.factory.path,
       fmt::format("no usable slot: restoring slot A from the factory bundle (version {})",
                   diagnosis.factory.version.ToString())});
  decision.actions.push_back({ActionKind::kReboot, Slot::kA, "",
                              "booting the restored slot A (its health gate commits it)"});
  return decision;
}

std::vector<std::string> DescribeDiagnosis(const Diagnosis& diagnosis) {
  std::vector<std::string> lines;
  lines.push_back(fmt::format("entered: {}{}{}", EntryPathName(diagnosis.entry),
                              diagnosis.entry_detail.empty() ? "" : ": ", diagnosis.entry_detail));
  if (diagnosis.record) {
    lines.push_back(fmt::format(
        "slot record: committed {}, anti-rollback minimum {}",
        diagnosis.record->committed ? std::string(SlotName(*diagnosis.record->committed)) : "none",
        diagnosis.record->minimum_version.ToString()));
  } else {
    lines.push_back(fmt::format("slot record: unreadable: {}", diagnosis.record_problem));
  }
  for (Slot slot : boot::kAllSlots) {
    const SlotFacts& facts = diagnosis.slot(slot);
    std::string state =
        facts.record ? fmt::format("{} (version {})", boot::SlotStatusName(facts.record->status),
                                   facts.record->version.ToString())
                     : std::string("unknown");
    lines.push_back(fmt::format("slot {}: {}; content {}{}{}; {}", SlotName(slot), state,
                                SlotContentName(facts.content), facts.detail.empty() ? "" : ": ",
                                facts.detail,
                                SlotUsable(diagnosis, slot) ? "usable" : "NOT usable"));
  }
  if (diagnosis.entries.needs_repair.empty()) {
    lines.push_back("boot entries: in order");
  } else {
    for (const auto& line : diagnosis.entries.needs_repair) {
      lines.push_back(fmt::format("boot entries: {}", line));
    }
  }
  lines.push_back(fmt::format("VAR: {}{}{}", VarHealthName(diagnosis.var.health),
                              diagnosis.var.detail.empty() ? "" : ": ", diagnosis.var.detail));
  const BundleFacts& factory = diagnosis.factory;
  lines.push_back(fmt::format("factory bundle {}: {}{}{}", factory.path,
                              BundleHealthName(factory.health),
                              factory.health == BundleHealth::kValid
                                  ? fmt::format(", version {}", factory.version.ToString())
                                  : std::string(),
                              factory.detail.empty() ? "" : fmt::format(" ({})", factory.detail)));
  return lines;
}

namespace {

std::vector<std::string_view> Words(std::string_view line) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) words.push_back(line.substr(start, i - start));
  }
  return words;
}

Result<void> Arity(std::string_view verb, const std::vector<std::string_view>& words, size_t min,
                   size_t max) {
  size_t given = words.size() - 1;
  if (given < min || given > max) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        min == max ? fmt::format("{} takes {} argument(s), got {}", verb, min, given)
                   : fmt::format("{} takes {} to {} arguments, got {}", verb, min, max, given));
  }
  return {};
}

Result<void> CheckPath(std::string_view what, std::string_view path) {
  if (path.empty() || path[0] != '/') {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} must be an absolute path, got '{}'", what, path));
  }
  return {};
}

}  // namespace

Result<MenuCommand> ParseMenuLine(std::string_view line) {
  if (line.size() > kMaxMenuLine) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("line too long ({} bytes, at most {})", line.size(), kMaxMenuLine));
  }
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  for (size_t i = 0; i < line.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(line[i]);
    if (c == '\t') continue;
    if (c < 0x20 || c >= 0x7f) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("unexpected byte 0x{:02x} at column {}", c, i + 1));
    }
  }
  std::vector<std::string_view> words = Words(line);
  if (words.empty()) return Error::Make(ErrorCode::kNotFound, "empty line");
  std::string verb;
  for (char c : words[0]) verb += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  MenuCommand command;
  if (verb == "help" || verb == "?") {
    TRY(Arity(verb, words, 0, 0));
    command.verb = MenuVerb::kHelp;
  } else if (verb == "status") {
    TRY(Arity(verb, words, 0, 0));
    command.verb = MenuVerb::kStatus;
  } else if (verb == "auto") {
    TRY(Arity(verb, words, 0, 0));
    command.verb = MenuVerb::kAuto;
  } else if (verb == "repair-boot") {
    TRY(Arity(verb, words, 0, 0));
    command.verb = MenuVerb::kRepairBoot;
  } else if (verb == "reset-var") {
    TRY(Arity(verb, words, 0, 0));
    command.verb = MenuVerb::kResetVar;
  } else if (verb == "restore") {
    TRY(Arity(verb, words, 1, 2));
    command.verb = MenuVerb::kRestore;
    command.slot = TRY(boot::ParseSlot(words[1]));
    if (words.size() == 3) {
      TRY(CheckPath("the bundle", words[2]));
      command.argument = std::string(words[2]);
    }
  } else if (verb == "export-logs") {
    TRY(Arity(verb, words, 1, 1));
    TRY(CheckPath("the device", words[1]));
    command.verb = MenuVerb::kExportLogs;
    command.argument = std::string(words[1]);
  } else if (verb == "reboot") {
    TRY(Arity(verb, words, 0, 1));
    command.verb = MenuVerb::kReboot;
    if (words.size() == 2) command.slot = TRY(boot::ParseSlot(words[1]));
  } else {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("unknown command '{}' (type help)", words[0]));
  }
  return command;
}

std::vector<std::string> MenuHelp() {
  return {
      "commands:",
      "  status                   diagnose again and show the state",
      "  auto                     do what recovery does by itself when the situation is clear",
      "  restore a|b [BUNDLE]     write the slot from the factory bundle (or a signed bundle "
      "file)",
      "  repair-boot              repair the Boot#### entries and BootOrder",
      fmt::format("  reset-var                recreate VAR empty (asks you to type {})",
                  kResetConfirmation),
      "  export-logs DEVICE       copy the logs and the audit log to a removable disk",
      "  reboot [a|b]             reboot (into the slot given, or the committed one)",
      "  help                     this list",
  };
}

}  // namespace ralph::recovery
