// RalphSlotState: the slot manager's own record in one EFI variable,
// RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d: versioned and
// CRC-protected so that a torn or foreign value is detected and the record
// re-initialised, never trusted (docs/architecture.md "Boot").
//
// Binary format, version 1, little-endian, 124 bytes:
//   offset size  field
//        0    4  magic 0x53534c52 ("RLSS" in memory)
//        4    2  format version (1)
//        6    2  total length in bytes (124)
//        8    1  committed slot: 0 none, 1 A, 2 B
//        9    3  reserved, zero
//       12   12  minimum allowed version: major, minor, patch (u32 each)
//       24   48  slot A: state (u8), tries left (u8), reserved (u16, zero),
//                version (3 x u32), image SHA-256 (32 bytes)
//       72   48  slot B: the same
//      120    4  CRC-32 (zlib) of bytes 0..119
//
// Versions are numeric major.minor.patch (each 0..2^32-1; "0.0.0" means
// unknown), compared field by field: no strings to parse in early boot and
// no ambiguity about "1.10" vs "1.9". The minimum version gates writing and
// activating a slot (anti-rollback); it does not stop the firmware from
// falling back to the previous good slot.
//
// The counter of consecutive failed boots of the committed slot is NOT in
// this record: it changes on every boot, and a healthy steady-state boot
// must write no EFI variable. It lives on VAR (boot/boot_failures.h):
// early boot counts it up and calls SlotManager::ArmRecovery() when it
// trips, the health gate clears it.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "platform/sha256.h"
#include "platform/version.h"

namespace ralph::boot {

enum class Slot : uint8_t { kA = 1, kB = 2 };
inline constexpr Slot kAllSlots[] = {Slot::kA, Slot::kB};
// What a Boot#### of ours starts: a slot's image or the rescue image.
enum class BootTarget : uint8_t { kSlotA = 1, kSlotB = 2, kRecovery = 3 };
inline constexpr BootTarget kAllBootTargets[] = {BootTarget::kSlotA, BootTarget::kSlotB,
                                                 BootTarget::kRecovery};

Slot OtherSlot(Slot slot);
BootTarget TargetOf(Slot slot);
std::optional<Slot> SlotOf(BootTarget target);
// "A", "B"; "RECOVERY".
std::string_view SlotName(Slot slot);
std::string_view BootTargetName(BootTarget target);
// "a"/"A" -> kA, "b"/"B" -> kB; kInvalidArgument naming the text otherwise.
Result<Slot> ParseSlot(std::string_view text);
// As ParseSlot, plus "recovery" (any case).
Result<BootTarget> ParseBootTarget(std::string_view text);

enum class SlotStatus : uint8_t { kEmpty = 0, kWriting = 1, kTrial = 2, kGood = 3, kBad = 4 };
// "empty", "writing", "trial", "good", "bad".
std::string_view SlotStatusName(SlotStatus status);

// A slot's version is a release version (platform/version.h).
using SlotVersion = ::ralph::Version;

// Spelled with DigestToHex and parsed with ParseSha256Hex (platform/sha256.h).
using ralph::Sha256Digest;

inline constexpr uint8_t kMaxTries = 15;

struct SlotRecord {
  SlotStatus status = SlotStatus::kEmpty;
  // Trial boots left, counting the one BootNext has armed (see
  // slot_manager.h OnBoot). 0 unless status is kTrial.
  uint8_t tries_left = 0;
  SlotVersion version;
  Sha256Digest digest{};
  friend bool operator==(const SlotRecord&, const SlotRecord&) = default;
};

struct SlotState {
  SlotRecord a;
  SlotRecord b;
  // The slot first in BootOrder. Always kGood when set (DecodeSlotState
  // rejects anything else). Unset on a machine with no good slot.
  std::optional<Slot> committed;
  SlotVersion minimum_version;

  SlotRecord& slot(Slot s) { return s == Slot::kA ? a : b; }
  const SlotRecord& slot(Slot s) const { return s == Slot::kA ? a : b; }
  friend bool operator==(const SlotState&, const SlotState&) = default;
};

inline constexpr std::string_view kSlotStateVariable = "RalphSlotState";
inline constexpr uint32_t kSlotStateMagic = 0x53534c52;
inline constexpr uint16_t kSlotStateFormatVersion = 1;
inline constexpr size_t kSlotStateSize = 124;

std::vector<uint8_t> EncodeSlotState(const SlotState& state);
// Strict: kCorrupt with what failed — "bad length: 100 bytes, expected 124",
// "bad magic 0x...", "unknown format version 7", "bad CRC: stored 0x...,
// computed 0x...", "slot B: unknown state 9", "committed slot A is not good
// (writing)", "reserved bytes not zero", ...
Result<SlotState> DecodeSlotState(std::span<const uint8_t> data);
// The semantic checks DecodeSlotState applies after the CRC, for a record
// built in memory.
Result<void> ValidateSlotState(const SlotState& state);

}  // namespace ralph::boot
