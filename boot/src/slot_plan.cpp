#include "boot/slot_plan.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "platform/arch.h"

namespace ralph::boot {

const EfiGuid kLoaderVendorGuid = {{0x82, 0xb0, 0x67, 0x4a, 0x4c, 0x0a, 0xcf, 0x41, 0xb6, 0xc7,
                                    0x44, 0x0b, 0x29, 0xbb, 0x8c, 0x4f}};

namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::optional<BootTarget> TargetForFile(std::string_view file) {
  for (BootTarget target : kAllBootTargets) {
    // FAT is case-insensitive and the firmware matches File() that way.
    if (EqualsIgnoreCase(file, BootTargetFile(target))) return target;
  }
  return std::nullopt;
}

std::string GuidText(const std::array<uint8_t, 16>& bytes) {
  EfiGuid guid;
  guid.bytes = bytes;
  return guid.ToString();
}

std::string DescribeEntry(const BootEntry& entry) {
  if (entry.option)
    return fmt::format("Boot{:04X} \"{}\"", entry.number, entry.option->description);
  return fmt::format("Boot{:04X}", entry.number);
}

// A UTF-16LE variable as text: up to the first NUL, '?' for non-ASCII.
std::string Utf16Text(const std::vector<uint8_t>& bytes) {
  std::string text;
  for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
    uint16_t c = static_cast<uint16_t>(bytes[i] | (bytes[i + 1] << 8));
    if (c == 0) break;
    text.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  return text;
}

// A path as the stub prints it, for comparing with our file names: '/'
// read as '\', runs of separators collapsed, a leading one added.
std::string NormalizeEspPath(std::string_view path) {
  std::string out = "\\";
  for (char c : path) {
    char sep = c == '/' ? '\\' : c;
    if (sep == '\\' && out.back() == '\\') continue;
    out.push_back(sep);
  }
  return out;
}

std::string RemovableFile() {
  return "\\EFI\\BOOT\\" + std::string(arch::RemovableBootFileName());
}

Result<SlotState> RequireRecord(const FirmwareView& view) {
  if (view.record) return *view.record;
  if (view.record_error) {
    return Error::Make(ErrorCode::kCorrupt, view.record_error->message() +
                                                "; run `ralphctl boot repair` to re-initialise it");
  }
  return Error::Make(ErrorCode::kNotFound,
                     "RalphSlotState is missing (machine not provisioned); run `ralphctl boot "
                     "repair` first");
}

Result<void> CheckTries(uint8_t tries) {
  if (tries < 1 || tries > kMaxTries) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("tries must be 1..{}, got {}", kMaxTries, tries));
  }
  return {};
}

Result<void> CheckVersion(const SlotState& record, Slot slot, const SlotVersion& version,
                          DowngradePolicy downgrade) {
  if (downgrade == DowngradePolicy::kRefuse && version < record.minimum_version) {
    return Error::Make(
        ErrorCode::kRefused,
        fmt::format("slot {}: version {} is below the minimum allowed version {} "
                    "(anti-rollback); an explicit downgrade override is needed",
                    SlotName(slot), version.ToString(), record.minimum_version.ToString()));
  }
  return {};
}

// Builds a plan step by step over a projection of the view, so each step
// sees the writes before it and writes only what differs.
class Planner {
 public:
  Planner(const PlanInput& in, const SlotState& record) : in_(in), view_(in.view) {
    plan_.record = record;
  }

  const FirmwareView& view() const { return view_; }
  SlotState& record() { return plan_.record; }
  void Find(std::string finding) { plan_.findings.push_back(std::move(finding)); }
  Plan& plan() { return plan_; }

  void WriteRecord(std::string why) {
    std::vector<uint8_t> bytes = EncodeSlotState(plan_.record);
    if (view_.record_raw && *view_.record_raw == bytes) return;
    Emit(kRalphVendorGuid, std::string(kSlotStateVariable), bytes, std::move(why));
    view_.record_raw = std::move(bytes);
    view_.record = plan_.record;
    view_.record_error.reset();
  }

  // A usable Boot#### for `target`: the existing one, rewritten in place if
  // it is stale, or a new one at the lowest free number.
  Result<uint16_t> EnsureEntry(BootTarget target) {
    const BootEntry* existing = view_.Find(target);
    if (existing && existing->canonical) return existing->number;
    if (!in_.esp) {
      if (existing) return existing->number;
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("no Boot#### entry for {} and no disk layout to create one "
                                     "(its device path needs the ESP partition)",
                                     BootTargetName(target)));
    }
    uint16_t number = existing ? existing->number : TRY(LowestFreeNumber());
    LoadOption option;
    option.attributes = kLoadOptionActive;
    option.description = std::string(BootTargetDescription(target));
    option.hard_drive = *in_.esp;
    option.file = std::string(BootTargetFile(target));
    std::vector<uint8_t> bytes =
        TRY_CTX(EncodeLoadOption(option),
                fmt::format("building Boot{:04X} for {}", number, BootTargetName(target)));
    Find(existing ? fmt::format("Boot{:04X} for {} is stale (inactive or wrong partition "
                                "geometry): rewritten",
                                number, BootTargetName(target))
                  : fmt::format("no Boot#### entry for {}: created Boot{:04X}",
                                BootTargetName(target), number));
    Emit(kEfiGlobalGuid, BootEntryName(number), bytes,
         fmt::format("boot entry for {}", BootTargetName(target)));
    view_.entries[number] = ClassifyEntry(number, std::move(bytes), in_.esp);
    return number;
  }

  void WriteBootOrder(std::string why) {
    std::vector<uint16_t> order = DesiredBootOrder(view_, plan_.record);
    std::vector<uint8_t> bytes = EncodeBootOrder(order);
    if (view_.boot_order_raw && *view_.boot_order_raw == bytes) return;
    Emit(kEfiGlobalGuid, "BootOrder", bytes, std::move(why));
    view_.boot_order_raw = std::move(bytes);
    view_.boot_order = std::move(order);
  }

  void SetBootNext(uint16_t number, std::string why) {
    std::vector<uint8_t> bytes = EncodeBootNumber(number);
    if (view_.boot_next_raw && *view_.boot_next_raw == bytes) return;
    Emit(kEfiGlobalGuid, "BootNext", bytes, std::move(why));
    view_.boot_next_raw = std::move(bytes);
    view_.boot_next = number;
  }

  void DeleteBootNext(std::string why) {
    if (!view_.boot_next_raw) return;
    Emit(kEfiGlobalGuid, "BootNext", std::nullopt, std::move(why));
    view_.boot_next_raw.reset();
    view_.boot_next.reset();
  }

  void DeleteEntry(uint16_t number, std::string why) {
    Emit(kEfiGlobalGuid, BootEntryName(number), std::nullopt, std::move(why));
    view_.entries.erase(number);
  }

  // The slot BootNext points at through one of our entries, if any.
  std::optional<BootTarget> BootNextTarget() const {
    if (!view_.boot_next) return std::nullopt;
    auto it = view_.entries.find(*view_.boot_next);
    if (it == view_.entries.end() || it->second.kind != EntryKind::kOurs) return std::nullopt;
    return it->second.target;
  }

  // Removes a BootNext the record does not call for: malformed, dangling, or
  // pointing at a slot that is not on trial. A BootNext to RECOVERY or to a
  // foreign entry (someone's one-shot) stays.
  void SanitizeBootNext() {
    if (view_.boot_next_raw && !view_.boot_next) {
      Find(fmt::format("BootNext is malformed ({} bytes): deleted", view_.boot_next_raw->size()));
      DeleteBootNext("malformed BootNext");
      return;
    }
    if (!view_.boot_next) return;
    auto it = view_.entries.find(*view_.boot_next);
    if (it == view_.entries.end()) {
      Find(fmt::format("BootNext points at Boot{:04X}, which does not exist: deleted",
                       *view_.boot_next));
      DeleteBootNext("dangling BootNext");
      return;
    }
    std::optional<BootTarget> target = BootNextTarget();
    if (!target) return;
    std::optional<Slot> slot = SlotOf(*target);
    if (slot && plan_.record.slot(*slot).status != SlotStatus::kTrial &&
        plan_.record.committed != slot) {
      Find(fmt::format("BootNext points at slot {}, which is {} (not on trial): deleted",
                       SlotName(*slot), SlotStatusName(plan_.record.slot(*slot).status)));
      DeleteBootNext("BootNext to a slot not on trial");
    }
  }

  // Our entries that duplicate the chosen one for their target: dropped
  // from BootOrder by DesiredBootOrder, deleted here (after BootOrder).
  void DeleteDuplicates() {
    std::vector<uint16_t> duplicates;
    for (const auto& [number, entry] : view_.entries) {
      if (entry.kind != EntryKind::kOurs) continue;
      const BootEntry* chosen = view_.Find(*entry.target);
      if (chosen && chosen->number != number && entry.canonical) duplicates.push_back(number);
    }
    for (uint16_t number : duplicates) {
      Find(fmt::format("Boot{:04X} duplicates the entry for {}: deleted", number,
                       BootTargetName(*view_.entries[number].target)));
      DeleteEntry(number, "duplicate boot entry");
    }
  }

 private:
  Result<uint16_t> LowestFreeNumber() const {
    for (uint32_t n = 0; n <= 0xffff; ++n) {
      uint16_t number = static_cast<uint16_t>(n);
      if (view_.entries.count(number)) continue;
      if (std::find(view_.boot_order.begin(), view_.boot_order.end(), number) !=
          view_.boot_order.end()) {
        continue;
      }
      return number;
    }
    return Error::Make(ErrorCode::kNoSpace, "no free Boot#### number");
  }

  void Emit(const EfiGuid& guid, std::string name, std::optional<std::vector<uint8_t>> data,
            std::string why) {
    plan_.writes.push_back(VarWrite{guid, std::move(name), std::move(data), std::move(why)});
  }

  const PlanInput& in_;
  FirmwareView view_;
  Plan plan_;
};

std::string OrderText(const std::vector<uint16_t>& order) {
  if (order.empty()) return "(empty)";
  std::string text;
  for (uint16_t number : order) text += fmt::format("{}{:04X}", text.empty() ? "" : ",", number);
  return text;
}

// The findings about entries that are not ours though they look it.
void ReportEntryProblems(Planner& planner) {
  for (const auto& [number, entry] : planner.view().entries) {
    if (entry.kind == EntryKind::kGarbled) {
      planner.Find(
          fmt::format("Boot{:04X} is not a valid load option ({}): left in place; the "
                      "firmware skips it",
                      number, entry.note));
    } else if (entry.kind == EntryKind::kForeign && entry.option &&
               (TargetForFile(entry.option->file) ||
                entry.option->description.rfind("RalphOS", 0) == 0)) {
      planner.Find(fmt::format("{} is not a RalphOS entry for this disk ({}): left in place",
                               DescribeEntry(entry), entry.note));
    }
  }
}

// The repair every boot does, shared by OnBoot and Repair: entries, record,
// BootNext for `arm` (a trial boot with tries left), BootOrder, stray
// BootNext, duplicates — in that order. `record_why` says why the record is
// written when it changed.
Result<void> RepairAll(Planner& planner, const PlanInput& in, std::string record_why,
                       std::optional<Slot> arm = std::nullopt) {
  ReportEntryProblems(planner);
  for (BootTarget target : kAllBootTargets) {
    if (!in.esp && !planner.view().Find(target)) {
      planner.Find(
          fmt::format("no Boot#### entry for {}; none can be created without the disk "
                      "layout",
                      BootTargetName(target)));
      continue;
    }
    TRY(planner.EnsureEntry(target));
  }
  planner.WriteRecord(std::move(record_why));
  if (arm) {
    // After the record (it says trial, with the try counted) and before
    // BootOrder: on a first boot the new BootOrder puts RECOVERY ahead of
    // the slot, and a cut between the two writes must still retry it.
    uint16_t number = TRY(planner.EnsureEntry(TargetOf(*arm)));
    planner.SetBootNext(number, fmt::format("re-arm the trial of slot {}", SlotName(*arm)));
  }
  std::vector<uint16_t> before = planner.view().boot_order;
  planner.WriteBootOrder("repair BootOrder");
  if (planner.view().boot_order != before) {
    planner.Find(fmt::format("BootOrder was {}: rewritten to {}", OrderText(before),
                             OrderText(planner.view().boot_order)));
  }
  planner.SanitizeBootNext();
  planner.DeleteDuplicates();
  return {};
}

// "slot A committed", "slot A on trial (3 tries; the health gate commits
// it)", "no slot committed".
std::string DescribeInitial(const SlotState& initial, std::optional<Slot> booted) {
  if (initial.committed) return fmt::format("slot {} committed", SlotName(*initial.committed));
  if (booted && initial.slot(*booted).status == SlotStatus::kTrial) {
    return fmt::format("slot {} on trial ({} tries; the health gate commits it)", SlotName(*booted),
                       initial.slot(*booted).tries_left);
  }
  return "no slot committed";
}

// The record to start from for OnBoot/Repair, re-initialised when missing
// or corrupt.
Result<SlotState> StartingRecord(const PlanInput& in, UnprovenBoot unproven,
                                 std::vector<std::string>& findings) {
  if (in.view.record) return *in.view.record;
  SlotState initial = InitialSlotState(in.view, in.booted, unproven);
  std::string problem = in.view.record_error ? in.view.record_error->message()
                                             : std::string("RalphSlotState is missing");
  if (!initial.committed && !in.booted) {
    // Nothing tells which slot works: writing a record with no committed
    // slot would put RECOVERY first and demote a machine that boots fine
    // from the removable path. Leave everything as it is.
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("{}, and the booted image cannot be told ({}): not "
                                   "initialising it (pass the kernel command line with "
                                   "ralph.slot=)",
                                   problem, in.booted_how));
  }
  std::string state = DescribeInitial(initial, in.booted ? SlotOf(*in.booted) : std::nullopt);
  if (in.view.record_error) {
    findings.push_back(fmt::format("{}: re-initialised with {}", problem, state));
  } else {
    findings.push_back(
        fmt::format("RalphSlotState is missing (first boot): initialised with {}", state));
  }
  return initial;
}

Result<Slot> RequireBootedSlot(const PlanInput& in, std::string_view verb) {
  if (!in.booted) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("{}: cannot tell the booted slot: {}", verb, in.booted_how));
  }
  std::optional<Slot> slot = SlotOf(*in.booted);
  if (!slot) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("{}: the RECOVERY image is booted, not a slot", verb));
  }
  return *slot;
}

}  // namespace

std::string_view BootTargetFile(BootTarget target) {
  switch (target) {
    case BootTarget::kSlotA: return "\\EFI\\ralph\\a.efi";
    case BootTarget::kSlotB: return "\\EFI\\ralph\\b.efi";
    case BootTarget::kRecovery: return "\\EFI\\ralph\\recovery.efi";
  }
  return "";
}

std::string_view BootTargetDescription(BootTarget target) {
  switch (target) {
    case BootTarget::kSlotA: return "RalphOS A";
    case BootTarget::kSlotB: return "RalphOS B";
    case BootTarget::kRecovery: return "RalphOS RECOVERY";
  }
  return "";
}

std::string_view BootEventName(BootEvent event) {
  switch (event) {
    case BootEvent::kNormal: return "normal";
    case BootEvent::kTrial: return "trial";
    case BootEvent::kRolledBack: return "rolled-back";
    case BootEvent::kRecovery: return "recovery";
    case BootEvent::kUncommitted: return "uncommitted";
    case BootEvent::kUnhealthySlot: return "unhealthy-slot";
    case BootEvent::kUnknown: return "unknown";
  }
  return "?";
}

const BootEntry* FirmwareView::Find(BootTarget target) const {
  auto matches = [&](const BootEntry& e) {
    return e.kind == EntryKind::kOurs && e.target == target;
  };
  for (uint16_t number : boot_order) {
    auto it = entries.find(number);
    if (it != entries.end() && matches(it->second)) return &it->second;
  }
  for (const auto& [number, entry] : entries) {
    if (matches(entry)) return &entry;
  }
  return nullptr;
}

BootEntry ClassifyEntry(uint16_t number, std::vector<uint8_t> raw,
                        const std::optional<HardDriveNode>& esp) {
  BootEntry entry;
  entry.number = number;
  Result<LoadOption> option = DecodeLoadOption(raw);
  entry.raw = std::move(raw);
  if (!option) {
    entry.kind = EntryKind::kGarbled;
    entry.note = option.error().message();
    return entry;
  }
  entry.option = std::move(*option);
  const LoadOption& opt = *entry.option;
  std::optional<BootTarget> target = TargetForFile(opt.file);
  entry.kind = EntryKind::kForeign;
  if (!target) {
    entry.note = opt.file.empty() ? "device path is not HD()/File()"
                                  : fmt::format("File({}) is not a RalphOS image", opt.file);
    return entry;
  }
  if (!opt.hard_drive) {
    entry.note = fmt::format("File({}) without an HD() node", opt.file);
    return entry;
  }
  if (esp && opt.hard_drive->partition_guid != esp->partition_guid) {
    entry.note =
        fmt::format("File({}) on partition {}, not this disk's ESP {}", opt.file,
                    GuidText(opt.hard_drive->partition_guid), GuidText(esp->partition_guid));
    return entry;
  }
  entry.kind = EntryKind::kOurs;
  entry.target = target;
  entry.canonical = (opt.attributes & kLoadOptionActive) != 0 && (!esp || *opt.hard_drive == *esp);
  return entry;
}

FirmwareView DecodeFirmwareView(const RawVariables& raw, const std::optional<HardDriveNode>& esp) {
  FirmwareView view;
  view.record_raw = raw.record;
  if (raw.record) {
    Result<SlotState> record = DecodeSlotState(*raw.record);
    if (record) {
      view.record = *record;
    } else {
      view.record_error = record.error();
    }
  }
  for (const auto& [number, bytes] : raw.entries) {
    view.entries[number] = ClassifyEntry(number, bytes, esp);
  }
  view.boot_order_raw = raw.boot_order;
  if (raw.boot_order) {
    // A torn BootOrder keeps its whole uint16s, as firmware reads it
    // (EDK2 BdsLibBootNext/BmGetBootOrder divide the size by 2).
    for (size_t i = 0; i + 1 < raw.boot_order->size(); i += 2) {
      view.boot_order.push_back(
          static_cast<uint16_t>((*raw.boot_order)[i] | ((*raw.boot_order)[i + 1] << 8)));
    }
  }
  view.boot_next_raw = raw.boot_next;
  if (raw.boot_next) {
    Result<uint16_t> next = DecodeBootNumber(*raw.boot_next);
    if (next) view.boot_next = *next;
  }
  if (raw.boot_current) {
    Result<uint16_t> current = DecodeBootNumber(*raw.boot_current);
    if (current) view.boot_current = *current;
  }
  if (raw.loader_image) view.loader_image = Utf16Text(*raw.loader_image);
  if (raw.loader_partition) view.loader_partition = Utf16Text(*raw.loader_partition);
  return view;
}

Result<std::optional<BootTarget>> ParseKernelSlot(std::string_view cmdline) {
  std::optional<std::string_view> value;
  size_t pos = 0;
  while (pos < cmdline.size()) {
    while (pos < cmdline.size() && std::isspace(static_cast<unsigned char>(cmdline[pos]))) ++pos;
    size_t end = pos;
    while (end < cmdline.size() && !std::isspace(static_cast<unsigned char>(cmdline[end]))) ++end;
    std::string_view word = cmdline.substr(pos, end - pos);
    constexpr std::string_view kKey = "ralph.slot=";
    if (word.substr(0, kKey.size()) == kKey) value = word.substr(kKey.size());
    pos = end;
  }
  if (!value) return std::optional<BootTarget>();
  Result<BootTarget> target = ParseBootTarget(*value);
  if (!target) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("kernel command line: ralph.slot={} is not a, b or recovery", *value));
  }
  return std::optional<BootTarget>(*target);
}

RemovablePathOwner RemovablePathSlot(const FirmwareView& view) {
  if (view.record && view.record->committed) {
    Slot slot = *view.record->committed;
    return {slot, fmt::format("the copy of the committed slot {}'s image (RalphSlotState)",
                              SlotName(slot))};
  }
  if (view.record) {
    std::vector<Slot> live;
    for (Slot slot : {Slot::kA, Slot::kB}) {
      SlotStatus status = view.record->slot(slot).status;
      if (status == SlotStatus::kGood || status == SlotStatus::kTrial) live.push_back(slot);
    }
    if (live.size() == 1) {
      return {live.front(),
              fmt::format("no slot is committed; slot {} is the only one good or on trial",
                          SlotName(live.front()))};
    }
  }
  for (uint16_t number : view.boot_order) {
    auto it = view.entries.find(number);
    if (it == view.entries.end() || it->second.kind != EntryKind::kOurs) continue;
    std::optional<Slot> slot = SlotOf(*it->second.target);
    if (!slot) break;  // RECOVERY first: nothing committed
    return {*slot, fmt::format("no usable RalphSlotState; slot {} is first in BootOrder",
                               SlotName(*slot))};
  }
  return {Slot::kA, "nothing names a committed slot: the factory image (slot A's)"};
}

BootedDetection DetectBooted(const FirmwareView& view, std::string_view cmdline,
                             const std::optional<HardDriveNode>& esp) {
  auto removable = [&](std::string_view via) -> BootedDetection {
    RemovablePathOwner owner = RemovablePathSlot(view);
    return {TargetOf(owner.slot),
            fmt::format("{}: the removable-media path {}, {}", via, RemovableFile(), owner.how)};
  };
  // 1. An explicit ralph.slot= (RECOVERY's UKI; host tools and tests).
  Result<std::optional<BootTarget>> from_cmdline = ParseKernelSlot(cmdline);
  std::string cmdline_note;
  if (!from_cmdline) {
    cmdline_note = "; " + from_cmdline.error().message() + " (ignored)";
  } else if (*from_cmdline) {
    std::string how =
        fmt::format("kernel command line ralph.slot={}", BootTargetName(**from_cmdline));
    if (view.loader_image) how += fmt::format(" (the firmware loaded {})", *view.loader_image);
    return {*from_cmdline, how};
  }
  // 2. The file the firmware loaded, as the stub recorded it.
  if (view.loader_image) {
    std::string file = NormalizeEspPath(*view.loader_image);
    if (view.loader_partition && esp) {
      Result<EfiGuid> partition = EfiGuid::Parse(*view.loader_partition);
      if (!partition || partition->bytes != esp->partition_guid) {
        return {std::nullopt,
                fmt::format("the firmware loaded {} from partition {}, not this disk's ESP {}{}",
                            *view.loader_image, *view.loader_partition,
                            GuidText(esp->partition_guid), cmdline_note)};
      }
    }
    if (std::optional<BootTarget> target = TargetForFile(file)) {
      return {target, fmt::format("LoaderImageIdentifier {} ({}){}", *view.loader_image,
                                  BootTargetDescription(*target), cmdline_note)};
    }
    if (EqualsIgnoreCase(file, RemovableFile())) {
      BootedDetection found = removable("LoaderImageIdentifier " + *view.loader_image);
      found.how += cmdline_note;
      return found;
    }
    return {std::nullopt, fmt::format("the firmware loaded {}, which is not a RalphOS image{}",
                                      *view.loader_image, cmdline_note)};
  }
  // 3./4. BootCurrent.
  if (!view.boot_current) {
    return {std::nullopt,
            "no LoaderImageIdentifier, no BootCurrent and no ralph.slot= on the kernel command "
            "line" +
                cmdline_note};
  }
  auto it = view.entries.find(*view.boot_current);
  if (it == view.entries.end()) {
    BootedDetection found = removable(
        fmt::format("BootCurrent is Boot{:04X}, which does not exist", *view.boot_current));
    found.how += cmdline_note;
    return found;
  }
  const BootEntry& entry = it->second;
  if (entry.kind == EntryKind::kOurs) {
    return {entry.target, fmt::format("BootCurrent Boot{:04X} ({}){}", *view.boot_current,
                                      BootTargetDescription(*entry.target), cmdline_note)};
  }
  // A firmware entry for a device (OVMF's "UEFI Misc Device") or for the
  // removable-media file on this ESP starts the removable path. An entry
  // for any other file, or for a file on another partition, started
  // something we cannot tell apart (another disk's RalphOS, say).
  bool removable_entry = entry.option && entry.option->file.empty();
  if (entry.option && EqualsIgnoreCase(NormalizeEspPath(entry.option->file), RemovableFile())) {
    removable_entry = !entry.option->hard_drive || !esp ||
                      entry.option->hard_drive->partition_guid == esp->partition_guid;
  }
  std::string current = fmt::format("BootCurrent is {}, not a RalphOS entry for this disk ({})",
                                    DescribeEntry(entry), entry.note);
  if (!removable_entry) return {std::nullopt, current + cmdline_note};
  BootedDetection found = removable(current);
  found.how += cmdline_note;
  return found;
}

SlotState InitialSlotState(const FirmwareView& view, std::optional<BootTarget> booted,
                           UnprovenBoot unproven) {
  SlotState state;
  for (uint16_t number : view.boot_order) {
    auto it = view.entries.find(number);
    if (it == view.entries.end() || it->second.kind != EntryKind::kOurs) continue;
    // The first of ours decides: a slot is the committed one; RECOVERY
    // ahead of every slot is how a machine with nothing committed (a first
    // boot on trial, or RECOVERY rewriting the slots) orders them.
    state.committed = SlotOf(*it->second.target);
    break;
  }
  std::optional<Slot> booted_slot = booted ? SlotOf(*booted) : std::nullopt;
  if (!state.committed && unproven == UnprovenBoot::kCommit) state.committed = booted_slot;
  if (state.committed) state.slot(*state.committed).status = SlotStatus::kGood;
  if (booted_slot && booted_slot != state.committed) {
    state.slot(*booted_slot).status = SlotStatus::kTrial;
    state.slot(*booted_slot).tries_left = state.committed ? 1 : kFirstBootTries;
  }
  return state;
}

std::vector<uint16_t> DesiredBootOrder(const FirmwareView& view, const SlotState& record) {
  std::vector<uint16_t> order;
  auto add = [&](BootTarget target) {
    if (const BootEntry* entry = view.Find(target)) order.push_back(entry->number);
  };
  if (record.committed) {
    add(TargetOf(*record.committed));
    Slot other = OtherSlot(*record.committed);
    SlotStatus status = record.slot(other).status;
    if (status == SlotStatus::kGood || status == SlotStatus::kTrial) add(TargetOf(other));
    add(BootTarget::kRecovery);
  } else {
    // No committed slot (a first boot before its health gate, or RECOVERY
    // rewriting the slots): a slot on trial goes after RECOVERY, so a crash
    // of its last try lands in RECOVERY rather than in the same untested
    // image again (its other tries come through BootNext).
    for (Slot slot : kAllSlots) {
      if (record.slot(slot).status == SlotStatus::kGood) add(TargetOf(slot));
    }
    add(BootTarget::kRecovery);
    for (Slot slot : kAllSlots) {
      if (record.slot(slot).status == SlotStatus::kTrial) add(TargetOf(slot));
    }
  }
  for (uint16_t number : view.boot_order) {
    if (std::find(order.begin(), order.end(), number) != order.end()) continue;
    auto it = view.entries.find(number);
    if (it == view.entries.end()) continue;             // dangling
    if (it->second.kind == EntryKind::kOurs) continue;  // a slot left out, or a duplicate
    order.push_back(number);
  }
  return order;
}

Result<Plan> PlanRepair(const PlanInput& in) {
  std::vector<std::string> findings;
  SlotState record = TRY_CTX(StartingRecord(in, UnprovenBoot::kCommit, findings), "repair");
  Planner planner(in, record);
  for (std::string& finding : findings) planner.Find(std::move(finding));
  TRY_CTX(RepairAll(planner, in, "initialise RalphSlotState"), "repair");
  return std::move(planner.plan());
}

// OnBoot on a RECOVERY boot: a rescue, not a slot boot. No try is counted,
// no trial judged and no record written (the committed slot must find its
// state as it left it); the Boot#### entries and BootOrder are repaired to
// what the record calls for, so the next boot starts the committed slot.
Result<Plan> PlanRecoveryBoot(const PlanInput& in) {
  if (!in.view.record) {
    // RECOVERY cannot tell which slot works, and a record written now
    // would name none, demoting a slot that boots. The next slot boot
    // initialises it.
    Planner planner(in, SlotState{});
    planner.plan().event = BootEvent::kRecovery;
    planner.Find(
        fmt::format("{}: left for the next slot boot to initialise (RECOVERY cannot "
                    "tell which slot works)",
                    in.view.record_error ? in.view.record_error->message()
                                         : std::string("RalphSlotState is missing")));
    return std::move(planner.plan());
  }
  Planner planner(in, *in.view.record);
  planner.plan().event = BootEvent::kRecovery;
  TRY_CTX(RepairAll(planner, in, "RalphSlotState (unchanged on a RECOVERY boot)"),
          "boot check (RECOVERY)");
  return std::move(planner.plan());
}

Result<Plan> PlanOnBoot(const PlanInput& in) {
  if (in.booted == BootTarget::kRecovery) return PlanRecoveryBoot(in);
  std::vector<std::string> findings;
  SlotState record = TRY_CTX(StartingRecord(in, UnprovenBoot::kTrial, findings), "boot check");
  Planner planner(in, record);
  for (std::string& finding : findings) planner.Find(std::move(finding));

  // Decide what this boot is, and what it changes in the record.
  SlotState& next = planner.record();
  // (A plain Slot rather than optional<Slot>: g++ 12 -O2 warns wrongly
  // about an uninitialised optional through the switch below.)
  const Slot booted = in.booted == BootTarget::kSlotB ? Slot::kB : Slot::kA;
  std::optional<Slot> rearm;
  std::string record_why = "initialise RalphSlotState";
  Plan& plan = planner.plan();
  // A slot on trial that is not what booted, with no BootNext pending for
  // it, failed its trial: its boot crashed, hung (watchdog) or was cut off,
  // and the firmware fell back by itself (or something else took the
  // BootNext). Armed and not yet taken means the trial has not happened.
  std::optional<Slot> failed_trial;
  if (in.booted) {
    for (Slot slot : kAllSlots) {
      if (booted == slot || next.slot(slot).status != SlotStatus::kTrial) continue;
      if (planner.BootNextTarget() == TargetOf(slot)) continue;
      next.slot(slot).status = SlotStatus::kBad;
      next.slot(slot).tries_left = 0;
      failed_trial = slot;
      plan.rolled_back = slot;
      planner.Find(fmt::format("slot {} failed its trial ({} booted instead): marked bad",
                               SlotName(slot), BootTargetName(*in.booted)));
      record_why = fmt::format("record the failed trial of slot {}", SlotName(slot));
    }
  }
  if (!in.booted) {
    plan.event = BootEvent::kUnknown;
    planner.Find("cannot tell the booted image: " + in.booted_how);
  } else if (next.committed.has_value() && *next.committed == booted) {
    plan.event = failed_trial ? BootEvent::kRolledBack : BootEvent::kNormal;
  } else {
    SlotRecord& slot = next.slot(booted);
    switch (slot.status) {
      case SlotStatus::kTrial: {
        plan.event = BootEvent::kTrial;
        bool already_armed = false;
        if (planner.view().boot_next) {
          auto it = planner.view().entries.find(*planner.view().boot_next);
          already_armed = it != planner.view().entries.end() &&
                          it->second.kind == EntryKind::kOurs &&
                          it->second.target == TargetOf(booted);
        }
        // The firmware deleted BootNext before loading us, so a crash now
        // falls back to the committed slot (or RECOVERY, when none is). With
        // tries left after this one, count this attempt and arm the next
        // (record first: a cut between the two loses a try, never adds
        // one). On the last try there is nothing to write.
        if (!already_armed && slot.tries_left >= 2) {
          --slot.tries_left;
          rearm = booted;
          record_why = fmt::format("count a trial boot of slot {}", SlotName(booted));
        }
        break;
      }
      case SlotStatus::kGood:
        plan.event = BootEvent::kUncommitted;
        planner.Find(fmt::format(
            "booted slot {} is good but not committed ({}); BootOrder names the committed one",
            SlotName(booted),
            next.committed ? fmt::format("slot {} is", SlotName(*next.committed))
                           : std::string("no slot is")));
        break;
      case SlotStatus::kBad:
      case SlotStatus::kEmpty:
      case SlotStatus::kWriting:
        plan.event = BootEvent::kUnhealthySlot;
        planner.Find(fmt::format("booted slot {} is marked {}", SlotName(booted),
                                 SlotStatusName(slot.status)));
        break;
    }
  }

  TRY_CTX(RepairAll(planner, in, record_why, rearm), "boot check");
  return std::move(planner.plan());
}

Result<Plan> PlanMarkGood(const PlanInput& in) {
  Slot slot = TRY(RequireBootedSlot(in, "mark-good"));
  SlotState record = TRY_CTX(RequireRecord(in.view), "mark-good");
  SlotRecord& current = record.slot(slot);
  if (current.status != SlotStatus::kTrial && current.status != SlotStatus::kGood) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("mark-good: booted slot {} is {}; only a slot on trial (or "
                                   "already good) can be committed",
                                   SlotName(slot), SlotStatusName(current.status)));
  }
  if (current.status == SlotStatus::kGood && record.committed && record.committed != slot) {
    // A healthy fallback boot (the firmware skipped the committed slot, or a
    // commit was cut short before BootOrder followed) does not move the
    // commit back: switching slots goes through a trial (mark-active).
    Planner planner(in, record);
    planner.Find(
        fmt::format("slot {} is good but slot {} is committed: left as is (mark-active "
                    "{} to switch to it)",
                    SlotName(slot), SlotName(*record.committed), SlotName(slot)));
    return std::move(planner.plan());
  }
  current.status = SlotStatus::kGood;
  current.tries_left = 0;
  record.committed = slot;
  record.minimum_version = std::max(record.minimum_version, current.version);
  Planner planner(in, record);
  // Record first: until BootOrder follows, the firmware keeps booting the
  // previous committed slot, which is still good.
  planner.WriteRecord(fmt::format("commit slot {}", SlotName(slot)));
  TRY_CTX(planner.EnsureEntry(TargetOf(slot)), "mark-good");
  planner.WriteBootOrder(fmt::format("slot {} first in BootOrder", SlotName(slot)));
  if (planner.BootNextTarget() == TargetOf(slot)) {
    planner.DeleteBootNext(fmt::format("trial of slot {} is over", SlotName(slot)));
  }
  return std::move(planner.plan());
}

Result<Plan> PlanMarkBad(const PlanInput& in, Slot slot) {
  SlotState record = TRY_CTX(RequireRecord(in.view), "mark-bad");
  if (record.committed == slot) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("mark-bad: slot {} is the committed slot; marking it bad would "
                                   "leave nothing to fall back to (use arm-recovery)",
                                   SlotName(slot)));
  }
  record.slot(slot).status = SlotStatus::kBad;
  record.slot(slot).tries_left = 0;
  Planner planner(in, record);
  // Disarm first: BootNext must never point at a slot the record calls bad.
  if (planner.BootNextTarget() == TargetOf(slot)) {
    planner.DeleteBootNext(fmt::format("slot {} is bad", SlotName(slot)));
  }
  planner.WriteRecord(fmt::format("mark slot {} bad", SlotName(slot)));
  planner.WriteBootOrder(fmt::format("drop slot {} from BootOrder", SlotName(slot)));
  return std::move(planner.plan());
}

Result<Plan> PlanMarkActive(const PlanInput& in, Slot slot, uint8_t tries,
                            DowngradePolicy downgrade) {
  TRY_CTX(CheckTries(tries), "mark-active");
  SlotState record = TRY_CTX(RequireRecord(in.view), "mark-active");
  SlotRecord& target = record.slot(slot);
  if (record.committed == slot) {
    return Error::Make(
        ErrorCode::kInvalidState,
        fmt::format("mark-active: slot {} is already the committed slot", SlotName(slot)));
  }
  if (target.status == SlotStatus::kEmpty || target.status == SlotStatus::kWriting) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("mark-active: slot {} is {}: it holds no complete image",
                                   SlotName(slot), SlotStatusName(target.status)));
  }
  TRY_CTX(CheckVersion(record, slot, target.version, downgrade), "mark-active");
  target.status = SlotStatus::kTrial;
  target.tries_left = tries;
  Planner planner(in, record);
  planner.WriteRecord(fmt::format("slot {} on trial, {} tries", SlotName(slot), tries));
  uint16_t number = TRY_CTX(planner.EnsureEntry(TargetOf(slot)), "mark-active");
  // BootNext before BootOrder: with no slot committed, BootOrder puts a
  // slot on trial behind RECOVERY, and a good slot put on trial must not
  // be stranded there by a cut between the two writes.
  planner.SetBootNext(number, fmt::format("try slot {} on the next boot", SlotName(slot)));
  planner.WriteBootOrder(fmt::format("slot {} after the committed slot", SlotName(slot)));
  return std::move(planner.plan());
}

Result<Plan> PlanArmRecovery(const PlanInput& in) {
  // Only the entry and BootNext are written: the record (or its absence) is
  // left to the boots that follow.
  Planner planner(in, in.view.record.value_or(SlotState{}));
  uint16_t number = TRY_CTX(planner.EnsureEntry(BootTarget::kRecovery), "arm-recovery");
  planner.SetBootNext(number, "boot RECOVERY next");
  return std::move(planner.plan());
}

Result<Plan> PlanBeginWrite(const PlanInput& in, Slot slot, const SlotVersion& version,
                            DowngradePolicy downgrade) {
  std::string verb = fmt::format("writing slot {}", SlotName(slot));
  SlotState record = TRY_CTX(RequireRecord(in.view), verb);
  if (!in.booted) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("{}: cannot tell the booted slot: {}", verb, in.booted_how));
  }
  std::optional<Slot> booted = SlotOf(*in.booted);
  if (booted == slot) {
    return Error::Make(ErrorCode::kRefused, fmt::format("{}: it is the booted slot", verb));
  }
  if (booted && record.committed != booted) {
    return Error::Make(
        ErrorCode::kRefused,
        fmt::format("{}: the booted slot {} is not committed ({}); commit it (mark-good) or "
                    "roll back first",
                    verb, SlotName(*booted), SlotStatusName(record.slot(*booted).status)));
  }
  TRY_CTX(CheckVersion(record, slot, version, downgrade), verb);
  record.slot(slot) = SlotRecord{SlotStatus::kWriting, 0, version, {}};
  // Only from RECOVERY can the committed slot be the target.
  if (record.committed == slot) record.committed.reset();
  Planner planner(in, record);
  // Nothing may boot the target once its first byte changes: disarm
  // BootNext, take it out of BootOrder, then record `writing`.
  if (planner.BootNextTarget() == TargetOf(slot)) {
    planner.DeleteBootNext(fmt::format("slot {} is being written", SlotName(slot)));
  }
  planner.WriteBootOrder(
      fmt::format("drop slot {} from BootOrder while it is written", SlotName(slot)));
  planner.WriteRecord(fmt::format("slot {} writing", SlotName(slot)));
  return std::move(planner.plan());
}

Result<Plan> PlanFinishWrite(const PlanInput& in, Slot slot, const SlotVersion& version,
                             const Sha256Digest& digest, uint8_t tries, DowngradePolicy downgrade) {
  std::string verb = fmt::format("finishing slot {}", SlotName(slot));
  TRY_CTX(CheckTries(tries), verb);
  SlotState record = TRY_CTX(RequireRecord(in.view), verb);
  SlotRecord& target = record.slot(slot);
  if (target.status != SlotStatus::kWriting) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("{}: the slot is {}, not being written (BeginWrite first)", verb,
                                   SlotStatusName(target.status)));
  }
  if (target.version != version) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: BeginWrite was for version {}, not {}", verb,
                                   target.version.ToString(), version.ToString()));
  }
  TRY_CTX(CheckVersion(record, slot, version, downgrade), verb);
  target.status = SlotStatus::kTrial;
  target.tries_left = tries;
  target.digest = digest;
  Planner planner(in, record);
  planner.WriteRecord(fmt::format("slot {} written, on trial", SlotName(slot)));
  uint16_t number = TRY_CTX(planner.EnsureEntry(TargetOf(slot)), verb);
  // BootNext before BootOrder, as for MarkActive: the trial is armed
  // whatever BootOrder says when the power goes.
  planner.SetBootNext(number, fmt::format("try slot {} on the next boot", SlotName(slot)));
  planner.WriteBootOrder(fmt::format("slot {} after the committed slot", SlotName(slot)));
  return std::move(planner.plan());
}

}  // namespace ralph::boot
