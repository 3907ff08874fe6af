#include "boot/testing/firmware_model.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "boot/slot_plan.h"
#include "platform/arch.h"

namespace ralph::boot {
namespace {

std::string Upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string CmdlineFor(BootTarget target) {
  switch (target) {
    // One UKI fits either slot: early boot tells them apart (DetectBooted).
    case BootTarget::kSlotA: return "ro panic=5";
    case BootTarget::kSlotB: return "ro panic=5";
    case BootTarget::kRecovery: return "root=PARTLABEL=RECOVERY ralph.slot=recovery panic=5";
  }
  return "";
}

constexpr std::string_view kRemovableDescription = "UEFI Misc Device";

std::string RemovablePath() {
  return "\\EFI\\BOOT\\" + std::string(arch::RemovableBootFileName());
}

}  // namespace

std::string_view BootSourceName(BootSource source) {
  switch (source) {
    case BootSource::kBootNext: return "BootNext";
    case BootSource::kBootOrder: return "BootOrder";
    case BootSource::kRemovable: return "removable path";
  }
  return "?";
}

EspContents EspContents::Full(const HardDriveNode& partition, std::optional<BootTarget> removable) {
  EspContents esp;
  esp.partition = partition;
  for (BootTarget target : kAllBootTargets) esp.files.insert(std::string(BootTargetFile(target)));
  esp.removable = removable;
  return esp;
}

std::vector<uint8_t> FirmwareRemovableEntry() {
  // EFI_LOAD_OPTION: Attributes, FilePathListLength, Description (UCS-2,
  // NUL-terminated), FilePathList: PciRoot(0x0) (ACPI, HID PNP0A03) + End.
  std::vector<uint8_t> path = {0x02, 0x01, 0x0c, 0x00, 0xd0, 0x41, 0x03, 0x0a,
                               0x00, 0x00, 0x00, 0x00, 0x7f, 0xff, 0x04, 0x00};
  std::vector<uint8_t> out = {0x01, 0x00, 0x00, 0x00, static_cast<uint8_t>(path.size()), 0x00};
  for (char c : kRemovableDescription) {
    out.push_back(static_cast<uint8_t>(c));
    out.push_back(0);
  }
  out.push_back(0);
  out.push_back(0);
  out.insert(out.end(), path.begin(), path.end());
  return out;
}

Result<BootTarget> FirmwareModel::Loadable(EfiVarStoreInterface& vars, uint16_t number) const {
  std::string name = BootEntryName(number);
  Result<EfiVariable> variable = vars.Get(kEfiGlobalGuid, name);
  if (!variable) return std::move(variable).error().WithContext(name);
  LoadOption option = TRY_CTX(DecodeLoadOption(variable->data), name);
  if ((option.attributes & kLoadOptionActive) == 0) {
    return Error::Make(ErrorCode::kInvalidState, name + ": inactive");
  }
  if (!option.hard_drive || option.file.empty()) {
    return Error::Make(ErrorCode::kUnsupported, name + ": not a file on a disk partition");
  }
  if (option.hard_drive->partition_guid != esp_.partition.partition_guid) {
    return Error::Make(ErrorCode::kNotFound, name + ": partition is not the ESP");
  }
  std::string file = Upper(option.file);
  auto present = std::find_if(esp_.files.begin(), esp_.files.end(),
                              [&](const std::string& f) { return Upper(f) == file; });
  if (present == esp_.files.end()) {
    return Error::Make(ErrorCode::kNotFound, name + ": " + option.file + " is not on the ESP");
  }
  for (BootTarget target : kAllBootTargets) {
    if (Upper(BootTargetFile(target)) == file) return target;
  }
  return Error::Make(ErrorCode::kUnsupported,
                     name + ": " + option.file + " is not a RalphOS image");
}

Result<FirmwareBoot> FirmwareModel::PowerOn(EfiVarStoreInterface& vars) {
  // 1. Volatile variables are gone after a power cycle.
  std::vector<std::string> names;
  for (const EfiGuid& guid : {kEfiGlobalGuid, kLoaderVendorGuid}) {
    names = TRY(vars.List(guid));
    for (const std::string& name : names) {
      Result<EfiVariable> variable = vars.Get(guid, name);
      if (variable && (variable->attributes & kEfiVariableNonVolatile) == 0) {
        TRY(vars.Delete(guid, name));
      }
    }
  }
  auto boot = [&](uint16_t number, BootTarget target, BootSource source) -> Result<FirmwareBoot> {
    FirmwareBoot result;
    result.target = target;
    result.source = source;
    result.boot_current = number;
    result.file =
        source == BootSource::kRemovable ? RemovablePath() : std::string(BootTargetFile(target));
    result.kernel_cmdline = CmdlineFor(target);
    std::vector<uint8_t> current = EncodeBootNumber(number);
    constexpr uint32_t kVolatile = kEfiVariableBootserviceAccess | kEfiVariableRuntimeAccess;
    TRY(vars.Set(kEfiGlobalGuid, "BootCurrent", current, kVolatile));
    if (stub_exports_image_) {
      EfiGuid partition;
      partition.bytes = esp_.partition.partition_guid;
      TRY(vars.Set(kLoaderVendorGuid, kLoaderImageIdentifierVariable, StubVariableText(result.file),
                   kVolatile));
      TRY(vars.Set(kLoaderVendorGuid, kLoaderDevicePartUuidVariable,
                   StubVariableText(Upper(partition.ToString())), kVolatile));
    }
    return result;
  };
  std::vector<std::string> skipped;

  // 2. BootNext: read, delete, then try.
  Result<EfiVariable> next = vars.Get(kEfiGlobalGuid, "BootNext");
  if (next) {
    TRY(vars.Delete(kEfiGlobalGuid, "BootNext"));
    Result<uint16_t> number = DecodeBootNumber(next->data);
    if (number) {
      Result<BootTarget> target = Loadable(vars, *number);
      if (target) return boot(*number, *target, BootSource::kBootNext);
      skipped.push_back("BootNext: " + target.error().message());
    }
  }

  // 3. BootOrder.
  std::vector<uint16_t> order;
  Result<EfiVariable> order_var = vars.Get(kEfiGlobalGuid, "BootOrder");
  if (order_var) {
    for (size_t i = 0; i + 1 < order_var->data.size(); i += 2) {
      order.push_back(static_cast<uint16_t>(order_var->data[i] | (order_var->data[i + 1] << 8)));
    }
  }
  for (uint16_t number : order) {
    Result<BootTarget> target = Loadable(vars, number);
    if (target) return boot(number, *target, BootSource::kBootOrder);
    skipped.push_back(target.error().message());
  }

  // 4. The removable-media path, through the firmware's own entry.
  if (esp_.removable) {
    std::vector<uint8_t> entry = FirmwareRemovableEntry();
    std::optional<uint16_t> number;
    names = TRY(vars.List(kEfiGlobalGuid));
    for (const std::string& name : names) {
      std::optional<uint16_t> n = ParseBootEntryName(name);
      if (!n) continue;
      Result<EfiVariable> variable = vars.Get(kEfiGlobalGuid, name);
      if (variable && variable->data == entry) number = n;
    }
    if (!number) {
      for (uint32_t n = 0; n <= 0xffff && !number; ++n) {
        if (std::find(names.begin(), names.end(), BootEntryName(static_cast<uint16_t>(n))) ==
            names.end()) {
          number = static_cast<uint16_t>(n);
        }
      }
      TRY(vars.Set(kEfiGlobalGuid, BootEntryName(*number), entry, kEfiVariableDefaultAttributes));
      order.push_back(*number);
      TRY(vars.Set(kEfiGlobalGuid, "BootOrder", EncodeBootOrder(order),
                   kEfiVariableDefaultAttributes));
    }
    return boot(*number, *esp_.removable, BootSource::kRemovable);
  }
  return Error::Make(ErrorCode::kNotFound,
                     fmt::format("no bootable option: {}", fmt::join(skipped, "; ")));
}

std::vector<uint8_t> StubVariableText(std::string_view text) {
  std::vector<uint8_t> out;
  for (char c : text) {
    out.push_back(static_cast<uint8_t>(c));
    out.push_back(0);
  }
  out.push_back(0);
  out.push_back(0);
  return out;
}

}  // namespace ralph::boot
