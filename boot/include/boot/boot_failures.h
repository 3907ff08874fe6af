// The boot-failure counter: how many boots of the committed slot in a row
// started and never reached a healthy state. Kept on VAR (a file changed on
// every boot must not be an EFI variable: NVRAM wears, and a healthy
// steady-state boot writes none), counted up by early boot before it
// switches root and cleared by the health gate when the boot is healthy.
// When early boot finds `limit` such boots behind it, it arms BootNext =
// RECOVERY (SlotManager::ArmRecovery) and resets the counter, so the next
// reset lands in RECOVERY and a rescued slot gets `limit` fresh boots.
//
// A trial boot is not counted: its tries are the slot manager's (a failed
// trial falls back by itself). A boot whose VAR cannot be mounted cannot
// keep the count, and counts as the limit reached: the next reset goes to
// RECOVERY, which recreates a VAR it cannot use.
//
// File format (text, one key=value a line, strict): "slot=A\ncount=2\n".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "boot/slot_state.h"
#include "platform/result.h"

namespace ralph::boot {

// Where the counter lives, as the running system sees VAR (/var).
inline constexpr std::string_view kBootFailuresPath = "/var/lib/ralph/boot-failures";
// Written by early boot when the counter trips (its reason, one line), read
// and removed by ralph-recovery: how RECOVERY was entered.
inline constexpr std::string_view kRecoveryArmedPath = "/var/lib/ralph/recovery-armed";
// M: failed boots of the committed slot in a row before RECOVERY is armed.
inline constexpr uint32_t kDefaultBootFailureLimit = 3;

struct BootFailures {
  Slot slot = Slot::kA;
  uint32_t count = 0;
  friend bool operator==(const BootFailures&, const BootFailures&) = default;
};

std::string RenderBootFailures(const BootFailures& failures);
// kCorrupt naming what is wrong ("line 2: count 'x' is not a number").
Result<BootFailures> ParseBootFailures(std::string_view text);

// What early boot found on VAR.
enum class CounterState {
  kRead,        // `stored` holds the counter
  kMissing,     // no file yet: nothing counted
  kCorrupt,     // unreadable or malformed: counted as nothing (logged)
  kVarUnusable  // VAR is not mounted: nothing can be kept
};

struct BootStart {
  // The counter to write before the boot goes on; unset: write nothing.
  std::optional<BootFailures> write;
  bool arm_recovery = false;
  // In words, for the console and the audit log.
  std::string why;
};

// Pure. `booted` is the slot this boot starts, `committed` the record's
// committed slot (unset: none, or unreadable).
BootStart OnBootStart(CounterState state, const std::optional<BootFailures>& stored, Slot booted,
                      std::optional<Slot> committed, uint32_t limit);

// Pure: what the health gate writes after a healthy boot of `booted` (unset:
// nothing, the counter is already clear).
std::optional<BootFailures> OnHealthyBoot(const std::optional<BootFailures>& stored, Slot booted);

}  // namespace ralph::boot
