#include "services/init/recovery_banner.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace ralph::init {
namespace {

std::string SlotLine(const boot::SlotState& record, boot::Slot slot) {
  const boot::SlotRecord& r = record.slot(slot);
  std::string line =
      fmt::format("slot {}: {}", boot::SlotName(slot), boot::SlotStatusName(r.status));
  if (r.status == boot::SlotStatus::kTrial) line += fmt::format(", {} tries left", r.tries_left);
  if (r.status != boot::SlotStatus::kEmpty)
    line += fmt::format(", version {}", r.version.ToString());
  if (record.committed == slot) line += " (committed)";
  return line;
}

}  // namespace

std::vector<std::string> RecoveryBanner(const std::optional<boot::SlotState>& record,
                                        const std::string& problem) {
  std::vector<std::string> lines = {
      "==================== RalphOS RECOVERY mode ====================",
      "this is a rescue boot: no slot is tried, counted, committed or marked bad",
  };
  if (!record) {
    lines.push_back(fmt::format("boot state: unknown ({})", problem));
  } else {
    lines.push_back(fmt::format("committed slot: {}",
                                record->committed
                                    ? std::string(boot::SlotName(*record->committed))
                                    : std::string("none (no slot has passed its health gate)")));
    std::vector<std::string_view> bad;
    for (boot::Slot slot : boot::kAllSlots) {
      lines.push_back(SlotLine(*record, slot));
      if (record->slot(slot).status == boot::SlotStatus::kBad) bad.push_back(boot::SlotName(slot));
    }
    lines.push_back(fmt::format("bad slots: {}", bad.empty()
                                                     ? std::string("none")
                                                     : fmt::format("{}", fmt::join(bad, ", "))));
  }
  if (record && record->committed) {
    lines.push_back(fmt::format("reboot to return to slot {}; `ralphctl boot status` for details",
                                boot::SlotName(*record->committed)));
  } else {
    lines.push_back(
        "no committed slot to return to: retry one with `ralphctl boot mark-active A|B`, then "
        "reboot");
  }
  lines.push_back("===============================================================");
  return lines;
}

}  // namespace ralph::init
