#include "services/agents/parser.h"

#include <deque>
#include <set>

#include <fmt/format.h>

#include "services/audit/redact.h"

namespace ralph::agents {
namespace {

using nlohmann::json;

// ---- reading JSON without exceptions (nlohmann's throwing accessors would
// abort under -fno-exceptions) ----

const json* Member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

std::string_view Str(const json& object, const char* key) {
  const json* value = Member(object, key);
  if (!value || !value->is_string()) return {};
  return value->get_ref<const std::string&>();
}

std::optional<uint64_t> U64(const json& object, const char* key) {
  const json* value = Member(object, key);
  if (!value) return std::nullopt;
  if (value->is_number_unsigned()) return value->get<uint64_t>();
  if (value->is_number_integer()) {
    int64_t n = value->get<int64_t>();
    return n < 0 ? 0 : static_cast<uint64_t>(n);
  }
  if (value->is_number_float()) {
    double d = value->get<double>();
    return d > 0 && d < 1.8e19 ? static_cast<uint64_t>(d) : 0;
  }
  return std::nullopt;
}

std::optional<double> Double(const json& object, const char* key) {
  const json* value = Member(object, key);
  if (!value || !value->is_number()) return std::nullopt;
  return value->get<double>();
}

bool Bool(const json& object, const char* key) {
  const json* value = Member(object, key);
  return value && value->is_boolean() && value->get<bool>();
}

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The deepest nesting of arrays and objects in `line`, counted on the bytes
// before parsing: the dump and the redaction of a parsed value recurse.
size_t NestingDepth(std::string_view line) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : line) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// Invalid UTF-8 bytes as '?', so that an excerpt of raw output is a valid
// JSON string.
std::string ValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    auto byte = static_cast<unsigned char>(text[i]);
    size_t length = byte < 0x80           ? 1
                    : (byte >> 5) == 0x6  ? 2
                    : (byte >> 4) == 0xE  ? 3
                    : (byte >> 3) == 0x1E ? 4
                                          : 0;
    bool valid = length > 0 && i + length <= text.size();
    for (size_t k = 1; valid && k < length; ++k) {
      valid = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    }
    if (valid && length > 1) {
      // Overlong forms, surrogates and code points past U+10FFFF.
      uint32_t cp = byte & (0x7F >> length);
      for (size_t k = 1; k < length; ++k) cp = (cp << 6) | (text[i + k] & 0x3F);
      static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      valid = cp >= kMin[length] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    }
    if (!valid) {
      out += '?';
      ++i;
      continue;
    }
    out.append(text.substr(i, length));
    i += length;
  }
  return out;
}

// ---- bounding and redacting what the tool said ----

std::string BoundText(std::string_view text, size_t max_bytes, bool* truncated) {
  return TruncateUtf8(audit::RedactText(text), max_bytes, truncated);
}

void TruncateStrings(json& value, size_t max_bytes, bool* any) {
  if (value.is_string()) {
    bool cut = false;
    std::string text = TruncateUtf8(value.get_ref<const std::string&>(), max_bytes, &cut);
    if (cut) {
      value = std::move(text);
      *any = true;
    }
  } else if (value.is_structured()) {
    for (json& child : value) TruncateStrings(child, max_bytes, any);
  }
}

// `value` redacted, each string cut to max_string_bytes; a string excerpt of
// its JSON when that is still longer than `max_total`.
json BoundJson(const json& value, size_t max_string_bytes, size_t max_total, bool* truncated) {
  json redacted = audit::RedactJson(value);
  *truncated = false;
  TruncateStrings(redacted, max_string_bytes, truncated);
  std::string dumped = Dump(redacted);
  if (dumped.size() <= max_total) return redacted;
  *truncated = true;
  return json(TruncateUtf8(dumped, max_total));
}

// Ids seen recently (tool call id -> tool name), bounded: the oldest is
// forgotten first.
class RecentIds {
 public:
  static constexpr size_t kCapacity = 1024;
  void Put(const std::string& id, const std::string& name) {
    if (id.empty()) return;
    if (names_.emplace(id, name).second) {
      order_.push_back(id);
      if (order_.size() > kCapacity) {
        names_.erase(order_.front());
        order_.pop_front();
      }
    }
  }
  const std::string* Find(const std::string& id) const {
    auto it = names_.find(id);
    return it == names_.end() ? nullptr : &it->second;
  }

 private:
  std::map<std::string, std::string> names_;
  std::deque<std::string> order_;
};

struct Tokens {
  uint64_t input = 0, output = 0, cache_read = 0, cache_write = 0;
  Tokens operator+(const Tokens& o) const {
    return {input + o.input, output + o.output, cache_read + o.cache_read,
            cache_write + o.cache_write};
  }
  bool operator==(const Tokens&) const = default;
};

UsageEvent MakeUsage(const Tokens& tokens, std::optional<double> cost) {
  return {tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, cost};
}

// ---- the line splitter every format shares ----

class LineParser : public EventParser {
 public:
  explicit LineParser(const EventLimits& limits) : limits_(limits) {}

  void Feed(std::string_view bytes, std::vector<AgentEvent>& out) override {
    while (!bytes.empty()) {
      size_t newline = bytes.find('\n');
      Append(bytes.substr(0, newline == std::string_view::npos ? bytes.size() : newline));
      if (newline == std::string_view::npos) break;
      EndLine(out);
      bytes.remove_prefix(newline + 1);
    }
  }

  void Finish(std::vector<AgentEvent>& out) override {
    if (!buffer_.empty() || overflow_bytes_ > 0) EndLine(out);
  }

 protected:
  // One parsed line: a JSON object with a string "type".
  virtual void Handle(std::string_view type, const json& value, std::vector<AgentEvent>& out) = 0;

  void Emit(std::vector<AgentEvent>& out, EventBody body) {
    out.push_back({line_, std::move(body)});
  }

  std::string Text(std::string_view text, bool* truncated) const {
    return BoundText(text, limits_.max_text_bytes, truncated);
  }
  std::string Output(std::string_view text, bool* truncated) const {
    return BoundText(text, limits_.max_output_bytes, truncated);
  }
  void EmitToolCall(std::vector<AgentEvent>& out, std::string_view id, std::string_view name,
                    const json& input) {
    ToolCallEvent call{std::string(id), std::string(name), {}, false};
    call.input =
        BoundJson(input, limits_.max_string_bytes, limits_.max_input_bytes, &call.input_truncated);
    Emit(out, std::move(call));
  }
  void EmitOther(std::vector<AgentEvent>& out, std::string_view type, const json& raw) {
    OtherEvent other{std::string(type), {}, false};
    other.raw = BoundJson(raw, limits_.max_string_bytes, limits_.max_raw_bytes, &other.truncated);
    Emit(out, std::move(other));
  }
  std::string Name(std::string_view text) const {
    return TruncateUtf8(text, limits_.max_string_bytes);
  }

  const EventLimits limits_;

 private:
  void Append(std::string_view piece) {
    if (overflow_bytes_ > 0) {
      overflow_bytes_ += piece.size();
      return;
    }
    if (buffer_.size() + piece.size() > limits_.max_line_bytes) {
      overflow_bytes_ = buffer_.size() + piece.size();
      if (buffer_.size() < limits_.max_excerpt_bytes) {
        buffer_.append(piece.substr(0, limits_.max_excerpt_bytes - buffer_.size()));
      }
      return;
    }
    buffer_.append(piece);
  }

  void EndLine(std::vector<AgentEvent>& out) {
    ++line_;
    if (overflow_bytes_ > 0) {
      ParseError(out, fmt::format("line of {} bytes is longer than the limit of {} bytes",
                                  overflow_bytes_, limits_.max_line_bytes));
    } else {
      std::string_view text = buffer_;
      while (!text.empty() && (text.back() == '\r' || text.back() == ' ' || text.back() == '\t')) {
        text.remove_suffix(1);
      }
      size_t start = text.find_first_not_of(" \t");
      if (start != std::string_view::npos) HandleLine(text.substr(start), out);
    }
    buffer_.clear();
    overflow_bytes_ = 0;
  }

  void HandleLine(std::string_view text, std::vector<AgentEvent>& out) {
    if (size_t depth = NestingDepth(text); depth > limits_.max_depth) {
      return ParseError(out, fmt::format("JSON nests {} levels deep, more than the limit of {}",
                                         depth, limits_.max_depth));
    }
    json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) return ParseError(out, "not JSON");
    if (!value.is_object()) return ParseError(out, "not a JSON object");
    const json* type = Member(value, "type");
    if (!type || !type->is_string()) return ParseError(out, "no \"type\" string member");
    Handle(type->get_ref<const std::string&>(), value, out);
  }

  void ParseError(std::vector<AgentEvent>& out, std::string reason) {
    std::string_view start = std::string_view(buffer_).substr(0, limits_.max_excerpt_bytes);
    Emit(out, ParseErrorEvent{std::move(reason), ValidUtf8(audit::RedactText(start))});
  }

  std::string buffer_;           // the line so far (at most max_line_bytes)
  uint64_t overflow_bytes_ = 0;  // > 0: the line is too long; buffer_ keeps its start
  uint64_t line_ = 0;
};

// ---- Claude Code: --output-format stream-json --verbose ----
//
// One message a line: {"type":"system","subtype":"init",...} first, then
// "assistant" messages (message.content: text, thinking, tool_use blocks;
// message.id and message.usage of the API message, repeated on each block's
// line), "user" messages carrying tool_result blocks, and one "result" at
// the end (subtype, is_error, result, num_turns, duration_ms,
// total_cost_usd, usage).
class ClaudeParser : public LineParser {
 public:
  using LineParser::LineParser;

 protected:
  void Handle(std::string_view type, const json& value, std::vector<AgentEvent>& out) override {
    if (type == "system" && Str(value, "subtype") == "init") return Init(value, out);
    if (type == "assistant" && Member(value, "message")) return Assistant(value, out);
    if (type == "user" && Member(value, "message")) return User(value, out);
    if (type == "result") return Final(value, out);
    EmitOther(out, type, value);
  }

 private:
  void Init(const json& value, std::vector<AgentEvent>& out) {
    SessionEvent session{Name(Str(value, "session_id")),
                         Name(Str(value, "model")),
                         Name(Str(value, "cwd")),
                         Name(Str(value, "claude_code_version")),
                         {}};
    if (const json* tools = Member(value, "tools"); tools && tools->is_array()) {
      for (const json& tool : *tools) {
        if (tool.is_string() && session.tools.size() < 512) {
          session.tools.push_back(Name(tool.get_ref<const std::string&>()));
        }
      }
    }
    Emit(out, std::move(session));
  }

  void Assistant(const json& value, std::vector<AgentEvent>& out) {
    const json& message = *Member(value, "message");
    const json* content = Member(message, "content");
    if (content && content->is_string()) {
      MessageEvent text;
      text.text = Text(content->get_ref<const std::string&>(), &text.truncated);
      Emit(out, std::move(text));
    } else if (content && content->is_array()) {
      for (const json& block : *content) {
        std::string_view kind = Str(block, "type");
        if (kind == "text") {
          MessageEvent text;
          text.text = Text(Str(block, "text"), &text.truncated);
          Emit(out, std::move(text));
        } else if (kind == "thinking") {
          ReasoningEvent thinking;
          thinking.text = Text(Str(block, "thinking"), &thinking.truncated);
          Emit(out, std::move(thinking));
        } else if (kind == "tool_use" || kind == "server_tool_use") {
          std::string id = Name(Str(block, "id"));
          std::string name = Name(Str(block, "name"));
          const json* input = Member(block, "input");
          EmitToolCall(out, id, name, input ? *input : json::object());
          tool_names_.Put(id, name);
        } else {
          EmitOther(out, fmt::format("assistant.{}", Name(kind)), block);
        }
      }
    }
    if (const json* usage = Member(message, "usage"); usage && usage->is_object()) {
      MessageUsage(Str(message, "id"), ReadTokens(*usage), out);
    }
  }

  void User(const json& value, std::vector<AgentEvent>& out) {
    const json* content = Member(*Member(value, "message"), "content");
    if (!content || !content->is_array()) return;
    for (const json& block : *content) {
      if (Str(block, "type") != "tool_result") continue;
      ToolResultEvent result;
      result.id = Name(Str(block, "tool_use_id"));
      if (const std::string* name = tool_names_.Find(result.id)) result.name = *name;
      result.status = Bool(block, "is_error") ? ToolStatus::kError : ToolStatus::kOk;
      const json* output = Member(block, "content");
      result.output = Output(output ? ContentText(*output) : "", &result.truncated);
      Emit(out, std::move(result));
    }
  }

  void Final(const json& value, std::vector<AgentEvent>& out) {
    std::optional<double> cost = Double(value, "total_cost_usd");
    if (const json* usage = Member(value, "usage"); usage && usage->is_object()) {
      // The result's totals are the run's own count: they replace ours.
      Emit(out, MakeUsage(ReadTokens(*usage), cost));
    }
    ResultEvent result;
    result.subtype = Name(Str(value, "subtype"));
    bool error =
        Bool(value, "is_error") || (!result.subtype.empty() && result.subtype != "success");
    result.status = error ? ResultStatus::kError : ResultStatus::kSuccess;
    std::string text(Str(value, "result"));
    if (const json* errors = Member(value, "errors");
        text.empty() && errors && errors->is_array()) {
      for (const json& e : *errors) {
        if (!text.empty()) text += '\n';
        text += e.is_string() ? e.get_ref<const std::string&>() : Dump(e);
      }
    }
    result.text = Text(text, &result.truncated);
    result.turns = U64(value, "num_turns");
    result.duration_ms = U64(value, "duration_ms");
    result.cost_usd = cost;
    Emit(out, std::move(result));
  }

  static Tokens ReadTokens(const json& usage) {
    return {U64(usage, "input_tokens").value_or(0), U64(usage, "output_tokens").value_or(0),
            U64(usage, "cache_read_input_tokens").value_or(0),
            U64(usage, "cache_creation_input_tokens").value_or(0)};
  }

  // Each content block of one API message comes on its own line with the
  // message's usage: the latest count of a message id replaces the earlier
  // ones, a new id adds to the total.
  void MessageUsage(std::string_view id, const Tokens& tokens, std::vector<AgentEvent>& out) {
    if (id != message_id_) {
      committed_ = committed_ + message_tokens_;
      message_id_ = Name(id);
    }
    message_tokens_ = tokens;
    Tokens total = committed_ + message_tokens_;
    if (total == emitted_) return;
    emitted_ = total;
    Emit(out, MakeUsage(total, std::nullopt));
  }

  // A tool_result's content: a string, or blocks of which the text ones count.
  static std::string ContentText(const json& content) {
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) return Dump(content);
    std::string text;
    for (const json& block : content) {
      if (!text.empty()) text += '\n';
      std::string_view kind = Str(block, "type");
      text += kind == "text" ? std::string(Str(block, "text")) : fmt::format("[{}]", kind);
    }
    return text;
  }

  RecentIds tool_names_;
  std::string message_id_;
  Tokens message_tokens_, committed_, emitted_;
};

// ---- Codex: codex exec --json ----
//
// {"type":"thread.started","thread_id"}, "turn.started", "item.started" /
// "item.updated" / "item.completed" with an item {id, type: agent_message,
// reasoning, command_execution, file_change, mcp_tool_call, web_search,
// todo_list, error, ...}, then "turn.completed" {usage: input_tokens,
// cached_input_tokens, output_tokens} or "turn.failed" {error: {message}};
// "error" {message} for a stream error. No cost, no timestamps.
class CodexParser : public LineParser {
 public:
  using LineParser::LineParser;

 protected:
  void Handle(std::string_view type, const json& value, std::vector<AgentEvent>& out) override {
    if (type == "thread.started") {
      return Emit(out, SessionEvent{Name(Str(value, "thread_id")), "", "", "", {}});
    }
    if (type == "turn.started") {
      ++turns_;
      return;
    }
    if (type == "turn.completed") return TurnEnd(value, ResultStatus::kSuccess, out);
    if (type == "turn.failed") return TurnEnd(value, ResultStatus::kError, out);
    if (type == "item.updated") return;  // progress of an item that completes later
    const json* item = Member(value, "item");
    if ((type == "item.started" || type == "item.completed") && item && item->is_object()) {
      return Item(*item, type == "item.completed", value, out);
    }
    EmitOther(out, type, value);
  }

 private:
  void TurnEnd(const json& value, ResultStatus status, std::vector<AgentEvent>& out) {
    ResultEvent result;
    result.status = status;
    if (status == ResultStatus::kSuccess) {
      if (const json* usage = Member(value, "usage"); usage && usage->is_object()) {
        // input_tokens counts the cached ones too (OpenAI's convention).
        tokens_ = tokens_ + Tokens{U64(*usage, "input_tokens").value_or(0),
                                   U64(*usage, "output_tokens").value_or(0),
                                   U64(*usage, "cached_input_tokens").value_or(0), 0};
        Emit(out, MakeUsage(tokens_, std::nullopt));
      }
      result.subtype = "success";
      result.text = last_message_;
      result.truncated = last_truncated_;
    } else {
      result.subtype = "turn.failed";
      const json* error = Member(value, "error");
      result.text = Text(error ? Str(*error, "message") : "", &result.truncated);
    }
    result.turns = turns_;
    Emit(out, std::move(result));
  }

  void Item(const json& item, bool completed, const json& line, std::vector<AgentEvent>& out) {
    std::string_view kind = Str(item, "type");
    std::string id = Name(Str(item, "id"));
    if (kind == "agent_message" || kind == "reasoning") {
      if (!completed) return;
      bool truncated = false;
      std::string text = Text(Str(item, "text"), &truncated);
      if (kind == "reasoning") return Emit(out, ReasoningEvent{std::move(text), truncated});
      last_message_ = text;
      last_truncated_ = truncated;
      return Emit(out, MessageEvent{std::move(text), truncated});
    }
    if (kind == "command_execution" || kind == "file_change" || kind == "mcp_tool_call" ||
        kind == "web_search" || kind == "collab_tool_call") {
      return Tool(kind, id, item, completed, out);
    }
    if (completed) EmitOther(out, fmt::format("item.{}", Name(kind)), line);
  }

  void Tool(std::string_view kind, const std::string& id, const json& item, bool completed,
            std::vector<AgentEvent>& out) {
    std::string name(kind);
    json input = json::object();
    if (kind == "command_execution") {
      input["command"] = std::string(Str(item, "command"));
    } else if (kind == "file_change") {
      if (const json* changes = Member(item, "changes")) input["changes"] = *changes;
    } else if (kind == "mcp_tool_call") {
      name = fmt::format("{}.{}", Str(item, "server"), Str(item, "tool"));
      if (const json* arguments = Member(item, "arguments")) input = *arguments;
    } else if (kind == "web_search") {
      input["query"] = std::string(Str(item, "query"));
    } else {
      name = fmt::format("collab.{}", Str(item, "tool"));
      input["prompt"] = std::string(Str(item, "prompt"));
    }
    name = Name(name);
    if (!completed) {
      EmitToolCall(out, id, name, input);
      started_.Put(id, name);
      return;
    }
    // file_change items only complete; others may have been missed.
    if (!started_.Find(id)) EmitToolCall(out, id, name, input);
    std::string_view status = Str(item, "status");
    ToolResultEvent result{id, name, ToolStatus::kOk, "", false};
    std::string output;
    if (kind == "command_execution") {
      output = Str(item, "aggregated_output");
      std::optional<uint64_t> exit_code = U64(item, "exit_code");
      if (status != "completed" || (exit_code && *exit_code != 0))
        result.status = ToolStatus::kError;
      if (const json* code = Member(item, "exit_code"); code && code->is_number_integer()) {
        output += fmt::format("{}[exit code {}]", output.empty() ? "" : "\n", code->get<int64_t>());
      }
    } else {
      if (status == "failed" || status == "declined") result.status = ToolStatus::kError;
      if (const json* error = Member(item, "error"); error && error->is_object()) {
        output = Str(*error, "message");
      } else if (const json* r = Member(item, "result"); r && r->is_object()) {
        const json* content = Member(*r, "content");
        output = content ? Dump(*content) : Dump(*r);
      }
    }
    result.output = Output(output, &result.truncated);
    Emit(out, std::move(result));
  }

  RecentIds started_;
  Tokens tokens_;
  uint64_t turns_ = 0;
  std::string last_message_;
  bool last_truncated_ = false;
};

// ---- OpenCode: opencode run --format json ----
//
// {"type", "timestamp" (ms), "sessionID", ...}: "step_start", "text" {part:
// {text}}, "reasoning", "tool_use" {part: {callID, tool, state: {status:
// completed|error, input, output|error}}} once a call finished,
// "step_finish" {part: {reason, cost, tokens: {input, output, reasoning,
// cache: {read, write}}}}, "error" {error}, and "done" {reason} when the
// session went idle.
class OpenCodeParser : public LineParser {
 public:
  using LineParser::LineParser;

 protected:
  void Handle(std::string_view type, const json& value, std::vector<AgentEvent>& out) override {
    if (!session_seen_ && !Str(value, "sessionID").empty()) {
      session_seen_ = true;
      first_timestamp_ = U64(value, "timestamp");
      Emit(out, SessionEvent{Name(Str(value, "sessionID")), "", "", "", {}});
    }
    const json* part = Member(value, "part");
    bool has_part = part && part->is_object();
    if (type == "step_start") return;
    if (type == "text" && has_part) {
      bool truncated = false;
      std::string text = Text(Str(*part, "text"), &truncated);
      last_text_ = text;
      last_truncated_ = truncated;
      return Emit(out, MessageEvent{std::move(text), truncated});
    }
    if (type == "reasoning" && has_part) {
      ReasoningEvent reasoning;
      reasoning.text = Text(Str(*part, "text"), &reasoning.truncated);
      return Emit(out, std::move(reasoning));
    }
    if (type == "tool_use" && has_part) return Tool(*part, out);
    if (type == "step_finish" && has_part) return Step(*part, out);
    if (type == "done") return Done(value, out);
    if (type == "error") error_seen_ = true;
    EmitOther(out, type, value);
  }

 private:
  void Tool(const json& part, std::vector<AgentEvent>& out) {
    std::string id = Name(Str(part, "callID"));
    std::string name = Name(Str(part, "tool"));
    const json* state = Member(part, "state");
    const json* input = state ? Member(*state, "input") : nullptr;
    EmitToolCall(out, id, name, input ? *input : json::object());
    ToolResultEvent result{id, name, ToolStatus::kOk, "", false};
    std::string_view output;
    if (state && Str(*state, "status") == "completed") {
      output = Str(*state, "output");
    } else {
      result.status = ToolStatus::kError;
      if (state) output = Str(*state, "error");
    }
    result.output = Output(output, &result.truncated);
    Emit(out, std::move(result));
  }

  void Step(const json& part, std::vector<AgentEvent>& out) {
    ++steps_;
    if (const json* tokens = Member(part, "tokens"); tokens && tokens->is_object()) {
      const json* cache = Member(*tokens, "cache");
      // Reasoning tokens are billed as output.
      tokens_ = tokens_ +
                Tokens{U64(*tokens, "input").value_or(0),
                       U64(*tokens, "output").value_or(0) + U64(*tokens, "reasoning").value_or(0),
                       cache ? U64(*cache, "read").value_or(0) : 0,
                       cache ? U64(*cache, "write").value_or(0) : 0};
    }
    cost_ += Double(part, "cost").value_or(0);
    Emit(out, MakeUsage(tokens_, cost_));
  }

  void Done(const json& value, std::vector<AgentEvent>& out) {
    ResultEvent result;
    result.status = error_seen_ ? ResultStatus::kError : ResultStatus::kSuccess;
    result.subtype = Name(Str(value, "reason"));
    result.text = last_text_;
    result.truncated = last_truncated_;
    result.turns = steps_;
    std::optional<uint64_t> now = U64(value, "timestamp");
    if (now && first_timestamp_ && *now >= *first_timestamp_) {
      result.duration_ms = *now - *first_timestamp_;
    }
    result.cost_usd = cost_;
    Emit(out, std::move(result));
  }

  bool session_seen_ = false;
  bool error_seen_ = false;
  std::optional<uint64_t> first_timestamp_;
  Tokens tokens_;
  double cost_ = 0;
  uint64_t steps_ = 0;
  std::string last_text_;
  bool last_truncated_ = false;
};

// The command profile: output is the job's own, not an event stream.
class NoEvents : public EventParser {
 public:
  void Feed(std::string_view, std::vector<AgentEvent>&) override {}
  void Finish(std::vector<AgentEvent>&) override {}
};

}  // namespace

std::unique_ptr<EventParser> MakeEventParser(AgentKind kind, const EventLimits& limits) {
  switch (kind) {
    case AgentKind::kClaude: return std::make_unique<ClaudeParser>(limits);
    case AgentKind::kCodex: return std::make_unique<CodexParser>(limits);
    case AgentKind::kOpenCode: return std::make_unique<OpenCodeParser>(limits);
    case AgentKind::kCommand: break;
  }
  return std::make_unique<NoEvents>();
}

}  // namespace ralph::agents
