// FirmwareModel: what a UEFI boot manager does at power-on, over an
// EfiVarStoreInterface holding the machine's NVRAM. Used by the slot
// manager's tests to ask "after this power cut, what would the machine
// boot?" without a VM: the firmware's choice as a model over the same
// variable store interface the slot manager writes.
//
// Modelled behaviour (UEFI spec 2.10 section 3.1.2 "Load Option
// Processing"; EDK2 MdeModulePkg/Universal/BdsDxe/BdsEntry.c BdsEntry(),
// which OVMF runs):
//   1. Volatile variables (BootCurrent) do not survive the power cut.
//   2. BootNext, if present, is read and DELETED before its entry is loaded
//      (BdsEntry deletes it right after reading). A BootNext that is not 2
//      bytes, names a missing or unloadable entry, is ignored.
//   3. Otherwise BootOrder is walked in order (a torn BootOrder keeps its
//      whole uint16s; EDK2 divides the size by sizeof(UINT16)); entries
//      that are missing, garbled, inactive, whose HD() is not the ESP
//      (matched by partition GUID, as EDK2's BmMatchPartitionDevicePathNode
//      does) or whose File() is not on the ESP are skipped.
//   4. Otherwise the removable-media path \EFI\BOOT\BOOTX64.EFI (BOOTAA64)
//      on the ESP, through a firmware-created entry "UEFI Misc Device"
//      whose device path is not HD()/File() — OVMF creates it and appends it
//      to BootOrder, as OVMF does (seen in the e2e boots).
//   5. BootCurrent (volatile) is set to the entry that booted.
//   6. The image's EFI stub (systemd-stub 252) sets the volatile
//      LoaderImageIdentifier (the file loaded) and LoaderDevicePartUUID (the
//      ESP's PARTUUID) under the systemd loader GUID, unless
//      set_stub_exports_image(false) models a stub that does not.
// Slot UKIs are slot-agnostic: their command line names no slot; RECOVERY's
// names itself (ralph.slot=recovery).
// Not modelled: entries that boot something other than a file on the ESP
// (network, shell): they are skipped, as if they failed to load.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "boot/slot_state.h"
#include "platform/efi_vars.h"
#include "platform/load_option.h"
#include "platform/result.h"

namespace ralph::boot {

struct EspContents {
  HardDriveNode partition;  // the ESP, as an HD() node names it
  // Files present, any case ("\EFI\ralph\a.efi").
  std::set<std::string> files;
  // Which image the removable-path copy is; unset when there is none.
  std::optional<BootTarget> removable;

  // An ESP holding a.efi, b.efi, recovery.efi and a removable copy of
  // `removable`.
  static EspContents Full(const HardDriveNode& partition,
                          std::optional<BootTarget> removable = BootTarget::kSlotA);
};

enum class BootSource { kBootNext, kBootOrder, kRemovable };
std::string_view BootSourceName(BootSource source);

struct FirmwareBoot {
  BootTarget target = BootTarget::kSlotA;  // the RalphOS image started
  BootSource source = BootSource::kBootOrder;
  uint16_t boot_current = 0;
  std::string file;  // the ESP file loaded
  // The command line embedded in that image's UKI (a slot's names no slot).
  std::string kernel_cmdline;
};

class FirmwareModel {
 public:
  explicit FirmwareModel(EspContents esp) : esp_(std::move(esp)) {}

  // One power-on. Changes `vars` as the firmware would (BootNext consumed,
  // BootCurrent set, volatile variables dropped, the removable-path entry
  // created). kNotFound "no bootable option: ..." when nothing boots.
  Result<FirmwareBoot> PowerOn(EfiVarStoreInterface& vars);

  const EspContents& esp() const { return esp_; }
  EspContents& mutable_esp() { return esp_; }
  void set_stub_exports_image(bool exports) { stub_exports_image_ = exports; }

 private:
  // The RalphOS image an entry would start, or why it cannot.
  Result<BootTarget> Loadable(EfiVarStoreInterface& vars, uint16_t number) const;

  EspContents esp_;
  bool stub_exports_image_ = true;
};

// The canned load option OVMF creates for a removable-path boot.
std::vector<uint8_t> FirmwareRemovableEntry();

// `text` as systemd-stub writes its Loader* variables: UTF-16LE (ASCII
// here) with a terminating NUL.
std::vector<uint8_t> StubVariableText(std::string_view text);

}  // namespace ralph::boot
