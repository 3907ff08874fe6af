// What early boot and PID 1 read from the kernel command line, and the
// hand-over record early boot leaves in /run for PID 1 and the health gate.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::boot {

// What this boot is. A RECOVERY boot (ralph.slot=recovery) is a rescue,
// not a slot boot: early boot counts no trial and writes no slot state, the
// health gate judges nothing, and the console says so.
enum class BootMode { kSlot, kRecovery };
// "slot", "recovery" (the early-boot record's `mode=`).
std::string_view BootModeName(BootMode mode);

// A slot's UKI is slot-agnostic (one update bundle installs into either
// slot): its command line has neither root= nor ralph.slot=, and early boot
// learns the slot from the firmware (boot::DetectBooted). RECOVERY's UKI
// names itself: root=PARTLABEL=RECOVERY ralph.slot=recovery.
struct BootConfig {
  std::optional<std::string> root_partlabel;  // from root=PARTLABEL=SYSTEM_A
  std::optional<std::string> slot;            // from ralph.slot=a|b|recovery
  int watchdog_seconds = 20;                  // from ralph.watchdog=N; 0 disables
  std::string init = "/sbin/ralph-init";      // from ralph.init=<path>

  BootMode mode() const { return slot == "recovery" ? BootMode::kRecovery : BootMode::kSlot; }
};

// Parses /proc/cmdline. kInvalidArgument when root= is not a PARTLABEL=,
// ralph.slot= is not a, b or recovery, or ralph.watchdog= is not a number.
Result<BootConfig> ParseKernelCmdline(std::string_view cmdline);

// The partition early boot mounts as the root of `slot` ("a", "b",
// "recovery"): SYSTEM_A, SYSTEM_B or RECOVERY. An explicit root= must be
// that partition (kInvalidArgument naming both otherwise: the slot told by
// the firmware never mounts another slot's root).
Result<std::string> RootPartLabel(const BootConfig& config, std::string_view slot);

// The slot letter in upper case for messages and SlotManager ("A", "B",
// "RECOVERY").
std::string SlotDisplayName(std::string_view slot);

// /run/ralph/early-boot: "key=value" lines.
inline constexpr const char* kEarlyBootRecordPath = "/run/ralph/early-boot";
std::string RenderRecord(const std::map<std::string, std::string>& values);
std::map<std::string, std::string> ParseRecord(std::string_view text);

}  // namespace ralph::boot
