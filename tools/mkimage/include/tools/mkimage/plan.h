// Pure planning for the appliance disk image: no I/O here, so every decision
// (partition placement, module load order, kernel command lines, file lists)
// is unit-tested on plain structs. builder.h applies the plan.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drivers/gpt.h"
#include "drivers/verity.h"
#include "platform/result.h"

namespace ralph::mkimage {

inline constexpr uint64_t kMiB = 1024 * 1024;

struct LayoutSizes {
  uint64_t esp_mib = 160;
  uint64_t system_mib = 48;
  uint64_t var_mib = 64;
  uint64_t recovery_mib = 96;  // the rescue filesystem + the factory bundle
};

// The GPT of the appliance disk (drivers/gpt.h applies it): EFI, SYSTEM_A,
// SYSTEM_B, VAR, RECOVERY in that order, partition and disk GUIDs derived
// from `seed` so the same inputs give the same disk (and the same Boot####
// device paths). kInvalidArgument for a size too small to hold anything (the
// ESP must be >= 64 MiB so mkfs.vfat can make FAT32, the others >= 8 MiB).
Result<GptSpec> ApplianceGpt(const LayoutSizes& sizes, std::string_view seed);
// The image file size that holds `spec`: the partitions, 1 MiB before them
// and 1 MiB after them for the backup GPT.
uint64_t DiskBytesFor(const GptSpec& spec);

// A UUID (version 4 layout) derived from SHA-256(seed + "/" + name).
std::string DeterministicUuid(std::string_view seed, std::string_view name);

// modules.dep (as written by depmod): "kernel/a.ko: kernel/b.ko kernel/c.ko".
// Returns module paths (relative to lib/modules/<version>/) in load order,
// dependencies first, each once. `wanted` are module names ("virtio_blk");
// dashes and underscores are equivalent, as in modprobe. kNotFound names
// every wanted module that modules.dep lacks (it may be built in: the caller
// checks modules.builtin).
Result<std::vector<std::string>> ResolveModules(std::string_view modules_dep,
                                                const std::vector<std::string>& wanted);

// "kernel/fs/ext4/ext4.ko.zst" -> "ext4".
std::string ModuleNameFromPath(std::string_view path);

enum class BootTarget { kSlotA, kSlotB, kRecovery };

struct CmdlineOptions {
  std::string console = "ttyS0";  // arch::SerialConsole() by default in main
  int panic_seconds = 5;
  int watchdog_seconds = 20;
  bool quiet = false;
  std::string extra;  // appended verbatim
};

// A slot's: "ro panic=5 console=ttyS0 ..." (no slot: the same UKI boots from
// either slot); RECOVERY's: "root=PARTLABEL=RECOVERY ralph.slot=recovery ro ...".
// With `verity`, the root image's dm-verity parameters follow
// (drivers/verity.h): the UKI is what the firmware verifies, so the root
// hash cannot change without it.
std::string KernelCmdline(BootTarget target, const CmdlineOptions& options,
                          const std::optional<VerityParams>& verity = std::nullopt);
// "a", "b", "recovery": the slot token and the UKI name on the ESP.
std::string_view TargetName(BootTarget target);
// "SYSTEM_A", "SYSTEM_B", "RECOVERY".
std::string_view TargetPartLabel(BootTarget target);

// Parses "ldd"-style output of `ld.so --list <binary>` into the absolute
// paths of the shared objects it needs (the loader included).
std::vector<std::string> ParseLoaderList(std::string_view ld_list_output);

// One service line for /etc/ralph/services.conf (format: services/init).
struct ServiceEntry {
  std::string name;
  std::string exec;                // absolute path in the slot image
  std::vector<std::string> args;   // extra arguments
  std::vector<std::string> after;  // names of services started first
  bool oneshot = false;
  bool required = true;
};
std::string RenderServicesConf(const std::vector<ServiceEntry>& services);

}  // namespace ralph::mkimage

namespace ralph::mkimage {

// objcopy stamps a PE image with the current time (COFF TimeDateStamp; the
// optional header's CheckSum covers it) and binutils 2.40 ignores
// SOURCE_DATE_EPOCH for PE output. Sets the stamp to `epoch` and recomputes
// the checksum (the PE/COFF specification's algorithm: 16-bit one's
// complement sum with the CheckSum field taken as zero, plus the file
// length). kInvalidArgument when `image` is not a PE file.
Result<void> SetPeTimestamp(std::vector<uint8_t>& image, uint32_t epoch);

}  // namespace ralph::mkimage
