#include "services/agents/events.h"

namespace ralph::agents {
namespace {

using nlohmann::json;

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

void PutCost(json& out, const std::optional<double>& cost) {
  if (cost) out["cost_usd"] = *cost;
}

}  // namespace

std::string TruncateUtf8(std::string_view text, size_t max_bytes, bool* truncated) {
  if (truncated) *truncated = text.size() > max_bytes;
  if (text.size() <= max_bytes) return std::string(text);
  size_t cut = max_bytes;
  // Back up over continuation bytes (10xxxxxx) so no sequence is split.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut));
}

json EventToJson(const AgentEvent& event) {
  json out = json::object();
  std::visit(
      Overloaded{
          [&](const SessionEvent& e) {
            out = {{"type", "session"}, {"session_id", e.session_id}, {"model", e.model},
                   {"cwd", e.cwd},      {"version", e.version},       {"tools", e.tools}};
          },
          [&](const MessageEvent& e) {
            out = {{"type", "message"}, {"text", e.text}, {"truncated", e.truncated}};
          },
          [&](const ReasoningEvent& e) {
            out = {{"type", "reasoning"}, {"text", e.text}, {"truncated", e.truncated}};
          },
          [&](const ToolCallEvent& e) {
            out = {{"type", "tool_call"},
                   {"id", e.id},
                   {"name", e.name},
                   {"input", e.input},
                   {"input_truncated", e.input_truncated}};
          },
          [&](const ToolResultEvent& e) {
            out = {
                {"type", "tool_result"}, {"id", e.id},
                {"name", e.name},        {"status", e.status == ToolStatus::kOk ? "ok" : "error"},
                {"output", e.output},    {"truncated", e.truncated}};
          },
          [&](const UsageEvent& e) {
            out = {{"type", "usage"},
                   {"input_tokens", e.input_tokens},
                   {"output_tokens", e.output_tokens},
                   {"cache_read_tokens", e.cache_read_tokens},
                   {"cache_write_tokens", e.cache_write_tokens}};
            PutCost(out, e.cost_usd);
          },
          [&](const ResultEvent& e) {
            out = {{"type", "result"},
                   {"status", e.status == ResultStatus::kSuccess ? "success" : "error"},
                   {"subtype", e.subtype},
                   {"text", e.text},
                   {"truncated", e.truncated}};
            if (e.turns) out["turns"] = *e.turns;
            if (e.duration_ms) out["duration_ms"] = *e.duration_ms;
            PutCost(out, e.cost_usd);
          },
          [&](const OtherEvent& e) {
            out = {{"type", "other"},
                   {"event", e.event_type},
                   {"raw", e.raw},
                   {"truncated", e.truncated}};
          },
          [&](const ParseErrorEvent& e) {
            out = {{"type", "parse_error"}, {"reason", e.reason}, {"excerpt", e.excerpt}};
          },
      },
      event.body);
  out["line"] = event.line;
  return out;
}

}  // namespace ralph::agents
