#include "boot/slot_state.h"

#include <fmt/format.h>

#include "platform/crc32.h"

namespace ralph::boot {
namespace {

Error Corrupt(std::string what) {
  return Error::Make(ErrorCode::kCorrupt, "RalphSlotState: " + std::move(what));
}

void PutU16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v));
  out.push_back(static_cast<uint8_t>(v >> 8));
}
void PutU32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint16_t GetU16(std::span<const uint8_t> d, size_t at) {
  return static_cast<uint16_t>(d[at] | (d[at + 1] << 8));
}
uint32_t GetU32(std::span<const uint8_t> d, size_t at) {
  return static_cast<uint32_t>(d[at]) | (static_cast<uint32_t>(d[at + 1]) << 8) |
         (static_cast<uint32_t>(d[at + 2]) << 16) | (static_cast<uint32_t>(d[at + 3]) << 24);
}

void PutVersion(std::vector<uint8_t>& out, const SlotVersion& v) {
  PutU32(out, v.major);
  PutU32(out, v.minor);
  PutU32(out, v.patch);
}
SlotVersion GetVersion(std::span<const uint8_t> d, size_t at) {
  return SlotVersion{GetU32(d, at), GetU32(d, at + 4), GetU32(d, at + 8)};
}

constexpr size_t kSlotOffsetA = 24;
constexpr size_t kSlotOffsetB = 72;
constexpr size_t kCrcOffset = 120;

void PutSlot(std::vector<uint8_t>& out, const SlotRecord& slot) {
  out.push_back(static_cast<uint8_t>(slot.status));
  out.push_back(slot.tries_left);
  PutU16(out, 0);
  PutVersion(out, slot.version);
  out.insert(out.end(), slot.digest.begin(), slot.digest.end());
}

Result<SlotRecord> GetSlot(std::span<const uint8_t> d, size_t at, Slot which) {
  SlotRecord slot;
  uint8_t status = d[at];
  if (status > static_cast<uint8_t>(SlotStatus::kBad)) {
    return Corrupt(fmt::format("slot {}: unknown state {}", SlotName(which), status));
  }
  slot.status = static_cast<SlotStatus>(status);
  slot.tries_left = d[at + 1];
  if (GetU16(d, at + 2) != 0) {
    return Corrupt(fmt::format("slot {}: reserved bytes not zero", SlotName(which)));
  }
  slot.version = GetVersion(d, at + 4);
  std::copy(d.begin() + static_cast<ptrdiff_t>(at + 16),
            d.begin() + static_cast<ptrdiff_t>(at + 48), slot.digest.begin());
  return slot;
}

}  // namespace

Slot OtherSlot(Slot slot) {
  return slot == Slot::kA ? Slot::kB : Slot::kA;
}

BootTarget TargetOf(Slot slot) {
  return slot == Slot::kA ? BootTarget::kSlotA : BootTarget::kSlotB;
}

std::optional<Slot> SlotOf(BootTarget target) {
  switch (target) {
    case BootTarget::kSlotA: return Slot::kA;
    case BootTarget::kSlotB: return Slot::kB;
    case BootTarget::kRecovery: return std::nullopt;
  }
  return std::nullopt;
}

std::string_view SlotName(Slot slot) {
  return slot == Slot::kA ? "A" : "B";
}

std::string_view BootTargetName(BootTarget target) {
  switch (target) {
    case BootTarget::kSlotA: return "A";
    case BootTarget::kSlotB: return "B";
    case BootTarget::kRecovery: return "RECOVERY";
  }
  return "?";
}

Result<Slot> ParseSlot(std::string_view text) {
  if (text == "a" || text == "A") return Slot::kA;
  if (text == "b" || text == "B") return Slot::kB;
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("unknown slot \"{}\": expected A or B", text));
}

Result<BootTarget> ParseBootTarget(std::string_view text) {
  if (text == "recovery" || text == "RECOVERY" || text == "Recovery") return BootTarget::kRecovery;
  if (text == "a" || text == "A") return BootTarget::kSlotA;
  if (text == "b" || text == "B") return BootTarget::kSlotB;
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("unknown boot target \"{}\": expected A, B or RECOVERY", text));
}

std::string_view SlotStatusName(SlotStatus status) {
  switch (status) {
    case SlotStatus::kEmpty: return "empty";
    case SlotStatus::kWriting: return "writing";
    case SlotStatus::kTrial: return "trial";
    case SlotStatus::kGood: return "good";
    case SlotStatus::kBad: return "bad";
  }
  return "?";
}

std::vector<uint8_t> EncodeSlotState(const SlotState& state) {
  std::vector<uint8_t> out;
  out.reserve(kSlotStateSize);
  PutU32(out, kSlotStateMagic);
  PutU16(out, kSlotStateFormatVersion);
  PutU16(out, static_cast<uint16_t>(kSlotStateSize));
  out.push_back(state.committed ? static_cast<uint8_t>(*state.committed) : 0);
  out.insert(out.end(), 3, 0);
  PutVersion(out, state.minimum_version);
  PutSlot(out, state.a);
  PutSlot(out, state.b);
  PutU32(out, Crc32(out));
  return out;
}

Result<void> ValidateSlotState(const SlotState& state) {
  for (Slot s : kAllSlots) {
    const SlotRecord& slot = state.slot(s);
    if (slot.tries_left > kMaxTries) {
      return Corrupt(fmt::format("slot {}: {} tries left, at most {}", SlotName(s), slot.tries_left,
                                 kMaxTries));
    }
    if (slot.status != SlotStatus::kTrial && slot.tries_left != 0) {
      return Corrupt(fmt::format("slot {}: {} tries left while {}", SlotName(s), slot.tries_left,
                                 SlotStatusName(slot.status)));
    }
  }
  if (state.committed && state.slot(*state.committed).status != SlotStatus::kGood) {
    return Corrupt(fmt::format("committed slot {} is not good ({})", SlotName(*state.committed),
                               SlotStatusName(state.slot(*state.committed).status)));
  }
  return {};
}

Result<SlotState> DecodeSlotState(std::span<const uint8_t> data) {
  // Order of checks: the cheapest thing that tells a foreign or truncated
  // blob apart first, the CRC before any field is trusted.
  if (data.size() < 8) {
    return Corrupt(fmt::format("bad length: {} bytes, expected {}", data.size(), kSlotStateSize));
  }
  uint32_t magic = GetU32(data, 0);
  if (magic != kSlotStateMagic) {
    return Corrupt(fmt::format("bad magic 0x{:08x}, expected 0x{:08x}", magic, kSlotStateMagic));
  }
  uint16_t format = GetU16(data, 4);
  if (format != kSlotStateFormatVersion) {
    return Corrupt(fmt::format("unknown format version {}, this build reads {}", format,
                               kSlotStateFormatVersion));
  }
  uint16_t length = GetU16(data, 6);
  if (length != kSlotStateSize || data.size() != kSlotStateSize) {
    return Corrupt(fmt::format("bad length: {} bytes (header says {}), expected {}", data.size(),
                               length, kSlotStateSize));
  }
  uint32_t stored = GetU32(data, kCrcOffset);
  uint32_t computed = Crc32(data.subspan(0, kCrcOffset));
  if (stored != computed) {
    return Corrupt(fmt::format("bad CRC: stored 0x{:08x}, computed 0x{:08x}", stored, computed));
  }
  SlotState state;
  uint8_t committed = data[8];
  if (committed > 2) return Corrupt(fmt::format("unknown committed slot {}", committed));
  if (committed != 0) state.committed = static_cast<Slot>(committed);
  if (data[9] != 0 || data[10] != 0 || data[11] != 0) return Corrupt("reserved bytes not zero");
  state.minimum_version = GetVersion(data, 12);
  state.a = TRY(GetSlot(data, kSlotOffsetA, Slot::kA));
  state.b = TRY(GetSlot(data, kSlotOffsetB, Slot::kB));
  TRY(ValidateSlotState(state));
  return state;
}

}  // namespace ralph::boot
