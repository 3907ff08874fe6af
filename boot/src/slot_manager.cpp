#include "boot/slot_manager.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "platform/load_option.h"

namespace ralph::boot {
namespace {

// Get that maps "absent" to nullopt and keeps every other error.
Result<std::optional<std::vector<uint8_t>>> GetOptional(EfiVarStoreInterface& vars,
                                                        const EfiGuid& guid,
                                                        std::string_view name) {
  Result<EfiVariable> variable = vars.Get(guid, name);
  if (!variable) {
    if (variable.error().code() == ErrorCode::kNotFound) {
      return std::optional<std::vector<uint8_t>>();
    }
    // A variable file cut short in a directory store (LibefivarStore reports
    // kCorrupt): present, with no usable bytes; the decoders report it and
    // repair rewrites it.
    if (variable.error().code() == ErrorCode::kCorrupt) {
      return std::optional<std::vector<uint8_t>>(std::vector<uint8_t>());
    }
    return variable.error().WithContext(fmt::format("reading {}", name));
  }
  return std::optional<std::vector<uint8_t>>(std::move(variable->data));
}

std::string LogName(const VarWrite& write) {
  return write.data ? write.name : "-" + write.name;
}

}  // namespace

Result<RawVariables> ReadRawVariables(EfiVarStoreInterface& vars) {
  RawVariables raw;
  raw.record = TRY(GetOptional(vars, kRalphVendorGuid, kSlotStateVariable));
  std::vector<std::string> names =
      TRY_CTX(vars.List(kEfiGlobalGuid), "listing EFI global variables");
  for (const std::string& name : names) {
    std::optional<uint16_t> number = ParseBootEntryName(name);
    if (!number) continue;
    std::optional<std::vector<uint8_t>> data = TRY(GetOptional(vars, kEfiGlobalGuid, name));
    if (data) raw.entries[*number] = std::move(*data);
  }
  raw.boot_order = TRY(GetOptional(vars, kEfiGlobalGuid, "BootOrder"));
  raw.boot_next = TRY(GetOptional(vars, kEfiGlobalGuid, "BootNext"));
  raw.boot_current = TRY(GetOptional(vars, kEfiGlobalGuid, "BootCurrent"));
  raw.loader_image = TRY(GetOptional(vars, kLoaderVendorGuid, kLoaderImageIdentifierVariable));
  raw.loader_partition = TRY(GetOptional(vars, kLoaderVendorGuid, kLoaderDevicePartUuidVariable));
  return raw;
}

Result<std::vector<std::string>> ApplyWrites(EfiVarStoreInterface& vars,
                                             const std::vector<VarWrite>& writes) {
  std::vector<std::string> written;
  for (const VarWrite& write : writes) {
    std::string context = fmt::format("writing {} ({})", write.name, write.why);
    // Compare before every write: NVRAM wears, and an
    // equal write is still a write the firmware has to garbage-collect.
    std::optional<std::vector<uint8_t>> current =
        TRY_CTX(GetOptional(vars, write.guid, write.name), context);
    if (current == write.data) continue;
    if (write.data) {
      TRY_CTX(vars.Set(write.guid, write.name, *write.data, kEfiVariableDefaultAttributes),
              context);
    } else {
      TRY_CTX(vars.Delete(write.guid, write.name), context);
    }
    written.push_back(LogName(write));
  }
  return written;
}

Result<SlotManager> SlotManager::Create(EfiVarStoreInterface& vars,
                                        std::optional<DiskLayout> layout,
                                        std::string kernel_cmdline) {
  std::optional<HardDriveNode> esp;
  if (layout) {
    std::vector<std::string_view> missing;
    for (std::string_view label : {kPartEfi, kPartSystemA, kPartSystemB, kPartRecovery}) {
      bool found = false;
      for (const PartitionInfo& part : layout->partitions) found |= part.label == label;
      if (!found) missing.push_back(label);
    }
    if (!missing.empty()) {
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("disk {}: no partition labelled {}", layout->disk,
                                     fmt::format("{}", fmt::join(missing, ", "))));
    }
    for (const PartitionInfo& part : layout->partitions) {
      if (part.label != kPartEfi) continue;
      esp = HardDriveNode{part.number, part.start_lba, part.size_lba, part.part_guid};
    }
  }
  return SlotManager(vars, std::move(layout), esp, std::move(kernel_cmdline));
}

Result<FirmwareView> SlotManager::ReadView() {
  RawVariables raw = TRY(ReadRawVariables(*vars_));
  return DecodeFirmwareView(raw, esp_);
}

PlanInput SlotManager::MakeInput(const FirmwareView& view, const BootedDetection& booted) const {
  return PlanInput{view, esp_, booted.target, booted.how};
}

template <typename Planner>
Result<Outcome> SlotManager::Run(Planner&& planner) {
  FirmwareView view = TRY(ReadView());
  BootedDetection booted = DetectBooted(view, kernel_cmdline_, esp_);
  Plan plan = TRY(planner(MakeInput(view, booted)));
  Outcome outcome;
  outcome.findings = std::move(plan.findings);
  outcome.record = plan.record;
  outcome.written = TRY(ApplyWrites(*vars_, plan.writes));
  return outcome;
}

Result<StatusReport> SlotManager::Status() {
  StatusReport report;
  report.view = TRY(ReadView());
  report.booted = DetectBooted(report.view, kernel_cmdline_, esp_);
  report.esp = esp_;
  if (layout_) report.disk = layout_->disk;
  Result<Plan> repair = PlanRepair(MakeInput(report.view, report.booted));
  if (repair) {
    report.needs_repair = repair->findings;
    for (const VarWrite& write : repair->writes) {
      report.repair_writes.push_back(LogName(write) + " (" + write.why + ")");
    }
  } else {
    report.needs_repair.push_back(repair.error().message());
  }
  return report;
}

Result<BootReport> SlotManager::OnBoot() {
  FirmwareView view = TRY(ReadView());
  BootedDetection booted = DetectBooted(view, kernel_cmdline_, esp_);
  Plan plan = TRY(PlanOnBoot(MakeInput(view, booted)));
  BootReport report;
  report.event = plan.event;
  report.booted = booted.target;
  report.booted_how = booted.how;
  report.rolled_back = plan.rolled_back;
  report.findings = std::move(plan.findings);
  report.record = plan.record;
  report.written = TRY_CTX(ApplyWrites(*vars_, plan.writes), "boot check");
  return report;
}

Result<Outcome> SlotManager::MarkGood() {
  return Run([](const PlanInput& in) { return PlanMarkGood(in); });
}

Result<Outcome> SlotManager::MarkBad(Slot slot) {
  return Run([slot](const PlanInput& in) { return PlanMarkBad(in, slot); });
}

Result<Outcome> SlotManager::MarkBadBooted() {
  return Run([](const PlanInput& in) -> Result<Plan> {
    if (!in.booted) {
      return Error::Make(ErrorCode::kInvalidState,
                         "mark-bad: cannot tell the booted slot: " + in.booted_how);
    }
    std::optional<Slot> slot = SlotOf(*in.booted);
    if (!slot) {
      return Error::Make(ErrorCode::kInvalidState,
                         "mark-bad: the RECOVERY image is booted, not a slot");
    }
    return PlanMarkBad(in, *slot);
  });
}

Result<Outcome> SlotManager::MarkActive(Slot slot, uint8_t tries, DowngradePolicy downgrade) {
  return Run([&](const PlanInput& in) { return PlanMarkActive(in, slot, tries, downgrade); });
}

Result<Outcome> SlotManager::ArmRecovery() {
  return Run([](const PlanInput& in) { return PlanArmRecovery(in); });
}

Result<Outcome> SlotManager::Repair() {
  return Run([](const PlanInput& in) { return PlanRepair(in); });
}

Result<Outcome> SlotManager::BeginWrite(Slot slot, const SlotVersion& version,
                                        DowngradePolicy downgrade) {
  return Run([&](const PlanInput& in) { return PlanBeginWrite(in, slot, version, downgrade); });
}

Result<Outcome> SlotManager::FinishWrite(Slot slot, const SlotVersion& version,
                                         const Sha256Digest& digest, uint8_t tries,
                                         DowngradePolicy downgrade) {
  return Run([&](const PlanInput& in) {
    return PlanFinishWrite(in, slot, version, digest, tries, downgrade);
  });
}

}  // namespace ralph::boot
