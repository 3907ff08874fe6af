// Random bytes through the three event-stream parsers with small limits (so
// over-long lines, truncation and the depth check are reached): no crash, no
// sanitizer report, every event's JSON dumps, and the events are the same
// whether the bytes come whole or split where the first byte says.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "services/agents/parser.h"

namespace {

std::string Events(ralph::agents::AgentKind kind, std::string_view data, size_t cut) {
  ralph::agents::EventLimits limits;
  limits.max_line_bytes = 2048;
  limits.max_text_bytes = 64;
  limits.max_output_bytes = 32;
  limits.max_input_bytes = 128;
  limits.max_string_bytes = 16;
  limits.max_raw_bytes = 128;
  limits.max_excerpt_bytes = 24;
  limits.max_depth = 16;
  auto parser = ralph::agents::MakeEventParser(kind, limits);
  std::vector<ralph::agents::AgentEvent> events;
  parser->Feed(data.substr(0, cut), events);
  parser->Feed(data.substr(cut), events);
  parser->Finish(events);
  std::string out;
  for (const auto& event : events) {
    // Throws (and aborts, without exceptions) on invalid UTF-8.
    out += ralph::agents::EventToJson(event).dump() + "\n";
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  if (size == 0) return 0;
  std::string_view data(reinterpret_cast<const char*>(bytes) + 1, size - 1);
  size_t cut = data.empty() ? 0 : (bytes[0] * data.size()) / 255;
  for (auto kind : {ralph::agents::AgentKind::kClaude, ralph::agents::AgentKind::kCodex,
                    ralph::agents::AgentKind::kOpenCode}) {
    if (Events(kind, data, data.size()) != Events(kind, data, cut)) __builtin_trap();
  }
  return 0;
}
