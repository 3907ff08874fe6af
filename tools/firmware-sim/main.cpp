// ralph-firmware-sim: one power-on of the firmware model (firmware_model.h)
// over the EFI variable store libefivar points at (EFIVARFS_PATH for a
// directory store) and the ESP of a disk image. A development and demo
// tool: it stands in for OVMF where no VM runs; never part of the product.
//
//   EFIVARFS_PATH=/tmp/x/efivars/ ralph-firmware-sim --disk disk.img
//
// Prints what booted to stderr and that image's kernel command line to
// stdout (for `ralphctl boot ... --cmdline "$(ralph-firmware-sim ...)"`).
// Exit status 1 when nothing boots.
#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "boot/testing/firmware_model.h"
#include "drivers/disk.h"
#include "platform/cli.h"
#include "platform/efivar_store.h"
#include "platform/load_option.h"

int main(int argc, char** argv) {
  using namespace ralph;
  using namespace ralph::boot;
  cli::Parser parser("ralph-firmware-sim",
                     "usage: ralph-firmware-sim --disk IMAGE (with EFIVARFS_PATH set)\n");
  std::string disk;
  parser.Option("--disk", &disk);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;
  if (disk.empty()) return parser.UsageError("--disk is required");
  Result<DiskLayout> layout = ProbeDisk(disk);
  if (!layout) {
    fmt::print(stderr, "ralph-firmware-sim: {}\n", layout.error().ToString());
    return 1;
  }
  const PartitionInfo* esp = layout->Find(kPartEfi);
  if (!esp) {
    fmt::print(stderr, "ralph-firmware-sim: {}: no partition labelled EFI\n", disk);
    return 1;
  }
  Result<std::unique_ptr<LibefivarStore>> store = LibefivarStore::Open();
  if (!store) {
    fmt::print(stderr, "ralph-firmware-sim: {}\n", store.error().ToString());
    return 1;
  }
  // The ESP holds all three images and a removable-path copy of A, as the
  // image builder lays it out.
  FirmwareModel firmware(
      EspContents::Full(HardDriveNode{esp->number, esp->start_lba, esp->size_lba, esp->part_guid}));
  Result<FirmwareBoot> boot = firmware.PowerOn(**store);
  if (!boot) {
    fmt::print(stderr, "firmware: {}\n", boot.error().ToString());
    return 1;
  }
  fmt::print(stderr, "firmware: booted {} via {} ({}, {})\n", BootTargetName(boot->target),
             BootSourceName(boot->source), BootEntryName(boot->boot_current), boot->file);
  fmt::print("{}\n", boot->kernel_cmdline);
  return 0;
}
