#include "boot/boot_failures.h"

#include <charconv>

#include <fmt/format.h>

namespace ralph::boot {

std::string RenderBootFailures(const BootFailures& failures) {
  return fmt::format("slot={}\ncount={}\n", SlotName(failures.slot), failures.count);
}

Result<BootFailures> ParseBootFailures(std::string_view text) {
  BootFailures failures;
  bool have_slot = false, have_count = false;
  size_t line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("line {}: not terminated (a torn write?)", line_no + 1));
    }
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    ++line_no;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return Error::Make(ErrorCode::kCorrupt, fmt::format("line {}: no '='", line_no));
    }
    std::string_view key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "slot" && !have_slot) {
      auto slot = ParseSlot(value);
      if (!slot || (value != "A" && value != "B")) {
        return Error::Make(ErrorCode::kCorrupt,
                           fmt::format("line {}: slot '{}' is not A or B", line_no, value));
      }
      failures.slot = *slot;
      have_slot = true;
    } else if (key == "count" && !have_count) {
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), failures.count);
      if (ec != std::errc() || end != value.data() + value.size() || value.empty()) {
        return Error::Make(ErrorCode::kCorrupt,
                           fmt::format("line {}: count '{}' is not a number", line_no, value));
      }
      have_count = true;
    } else {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("line {}: unexpected or repeated key '{}'", line_no, key));
    }
  }
  if (!have_slot || !have_count) {
    return Error::Make(ErrorCode::kCorrupt, have_slot ? "no count" : "no slot");
  }
  return failures;
}

BootStart OnBootStart(CounterState state, const std::optional<BootFailures>& stored, Slot booted,
                      std::optional<Slot> committed, uint32_t limit) {
  BootStart start;
  if (committed != booted) {
    start.why = fmt::format("slot {} is not the committed slot: its boots are not counted",
                            SlotName(booted));
    return start;
  }
  if (state == CounterState::kVarUnusable) {
    start.arm_recovery = true;
    start.why = fmt::format(
        "VAR cannot be mounted: this boot of slot {} counts as failed and nothing can be "
        "counted; arming RECOVERY for the next boot",
        SlotName(booted));
    return start;
  }
  uint32_t failed =
      state == CounterState::kRead && stored && stored->slot == booted ? stored->count : 0;
  if (failed >= limit) {
    start.arm_recovery = true;
    start.write = BootFailures{booted, 0};
    start.why = fmt::format(
        "slot {} failed to reach a healthy state {} boots in a row: arming RECOVERY for the "
        "next boot",
        SlotName(booted), failed);
    return start;
  }
  start.write = BootFailures{booted, failed + 1};
  start.why = fmt::format("boot {} of slot {} since its last healthy one (RECOVERY after {})",
                          failed + 1, SlotName(booted), limit);
  return start;
}

std::optional<BootFailures> OnHealthyBoot(const std::optional<BootFailures>& stored, Slot booted) {
  if (stored && stored->count == 0 && stored->slot == booted) return std::nullopt;
  return BootFailures{booted, 0};
}

}  // namespace ralph::boot
