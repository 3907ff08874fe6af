// Job events parsed from an agent's JSON event stream, and their JSON form on
// ralphd's event stream (schema in docs/agent-profiles.md).
//
// Everything that came from the tool is bounded and redacted before it is an
// event: text through audit::RedactText, tool parameters through
// audit::RedactJson, then cut to the limits in EventLimits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace ralph::agents {

struct EventLimits {
  size_t max_line_bytes = 4 << 20;    // a longer line is a parse error
  size_t max_text_bytes = 64 << 10;   // message, reasoning and result text
  size_t max_output_bytes = 4 << 10;  // a tool result's output
  size_t max_input_bytes = 8 << 10;   // a tool call's parameters, as JSON
  size_t max_string_bytes = 2 << 10;  // one string inside the parameters
  size_t max_raw_bytes = 4 << 10;     // an unknown event, as JSON
  size_t max_excerpt_bytes = 256;     // the start of a line that did not parse
  size_t max_depth = 64;              // nesting of a line's JSON
};

// The tool's session started (Claude's system/init, Codex's thread.started,
// the first OpenCode event): what is known of it.
struct SessionEvent {
  std::string session_id;
  std::string model;  // empty when the tool does not say
  std::string cwd;
  std::string version;
  std::vector<std::string> tools;
};

struct MessageEvent {  // text the assistant wrote
  std::string text;
  bool truncated = false;
};

struct ReasoningEvent {  // the model's reasoning summary, when shown
  std::string text;
  bool truncated = false;
};

struct ToolCallEvent {
  std::string id;
  std::string name;
  nlohmann::json input;  // redacted; a string excerpt when input_truncated
  bool input_truncated = false;
};

enum class ToolStatus { kOk, kError };

struct ToolResultEvent {
  std::string id;
  std::string name;  // empty when the tool's call was not seen
  ToolStatus status = ToolStatus::kOk;
  std::string output;
  bool truncated = false;
};

// The run's usage so far (cumulative): a consumer keeps the last one.
struct UsageEvent {
  uint64_t input_tokens = 0;
  uint64_t output_tokens = 0;
  uint64_t cache_read_tokens = 0;
  uint64_t cache_write_tokens = 0;
  std::optional<double> cost_usd;  // when the tool reports cost
};

enum class ResultStatus { kSuccess, kError };

struct ResultEvent {
  ResultStatus status = ResultStatus::kSuccess;
  std::string subtype;  // the tool's own word for it ("success", "error_max_turns", ...)
  std::string text;
  bool truncated = false;
  std::optional<uint64_t> turns;
  std::optional<uint64_t> duration_ms;
  std::optional<double> cost_usd;
};

// A well-formed event of a type this parser does not know (forward
// compatible): its type and its content, redacted and bounded.
struct OtherEvent {
  std::string event_type;
  nlohmann::json raw;  // a string excerpt when truncated
  bool truncated = false;
};

// A line that is not a JSON object with a "type", nests too deep, or is longer
// than the limit.
struct ParseErrorEvent {
  std::string reason;
  std::string excerpt;  // the line's start, redacted
};

using EventBody =
    std::variant<SessionEvent, MessageEvent, ReasoningEvent, ToolCallEvent, ToolResultEvent,
                 UsageEvent, ResultEvent, OtherEvent, ParseErrorEvent>;

struct AgentEvent {
  uint64_t line = 0;  // 1-based line of the tool's output it came from
  EventBody body;
};

// {"type": "session" | "message" | "reasoning" | "tool_call" | "tool_result" |
//  "usage" | "result" | "other" | "parse_error", "line": N, ...}.
nlohmann::json EventToJson(const AgentEvent& event);

// `text` cut to at most `max_bytes` without splitting a UTF-8 sequence;
// `truncated` says whether anything was cut.
std::string TruncateUtf8(std::string_view text, size_t max_bytes, bool* truncated = nullptr);

}  // namespace ralph::agents
