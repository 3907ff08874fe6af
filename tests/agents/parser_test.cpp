// The event-stream parsers on recorded samples of each tool's format
// (samples/*.jsonl): the events each line becomes, the same events however
// the bytes are split, and bad input (malformed, over-long, too deep lines)
// turned into parse errors.
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "event_test_util.h"
#include "platform/file_io.h"
#include "services/agents/parser.h"

namespace ralph::agents {
namespace {

using nlohmann::json;

std::string Sample(const std::string& name) {
  const char* source = std::getenv("RALPH_SOURCE_DIR");
  std::string path = std::string(source ? source : ".") + "/tests/agents/samples/" + name;
  Result<std::string> text = ReadWholeFile(path);
  EXPECT_TRUE(text.has_value()) << path;
  return text ? *text : "";
}

std::vector<std::string> Types(const std::vector<json>& events) {
  std::vector<std::string> types;
  for (const json& event : events) types.push_back(event["type"].get<std::string>());
  return types;
}

std::string Dump(const std::vector<json>& events) {
  std::string out;
  for (const json& event : events) out += event.dump() + "\n";
  return out;
}

// Fed in two pieces split at every offset, and one byte at a time: the
// events of the whole.
void ExpectSplitInvariant(AgentKind kind, const std::string& bytes) {
  std::string whole = Dump(Parse(kind, bytes));
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    std::unique_ptr<EventParser> parser = MakeEventParser(kind);
    std::vector<AgentEvent> events;
    parser->Feed(std::string_view(bytes).substr(0, cut), events);
    parser->Feed(std::string_view(bytes).substr(cut), events);
    parser->Finish(events);
    ASSERT_EQ(Dump(ToJson(events)), whole) << "split at byte " << cut;
  }
  std::unique_ptr<EventParser> parser = MakeEventParser(kind);
  std::vector<AgentEvent> events;
  for (char c : bytes) parser->Feed(std::string_view(&c, 1), events);
  parser->Finish(events);
  EXPECT_EQ(Dump(ToJson(events)), whole) << "one byte at a time";
}

TEST(ClaudeParserTest, StreamJsonSampleBecomesTypedEvents) {
  std::vector<json> events = Parse(AgentKind::kClaude, Sample("claude.jsonl"));
  EXPECT_EQ(Types(events),
            (std::vector<std::string>{"session", "message", "usage", "tool_call", "usage",
                                      "tool_result", "reasoning", "tool_call", "usage",
                                      "tool_result", "tool_call", "usage", "tool_result", "other",
                                      "message", "usage", "usage", "result"}));
  const json& session = events[0];
  EXPECT_EQ(session["session_id"], "9a3f6b2e-5d41-4c1e-8f0a-2b7c6d9e1f03");
  EXPECT_EQ(session["model"], "claude-sonnet-4-5-20250929");
  EXPECT_EQ(session["cwd"], "/work");
  EXPECT_EQ(session["version"], "2.0.27");
  EXPECT_EQ(session["tools"].size(), 10u);
  EXPECT_EQ(session["line"], 1);

  std::vector<json> calls = OfType(events, "tool_call");
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0]["id"], "toolu_01Run");
  EXPECT_EQ(calls[0]["name"], "Bash");
  EXPECT_EQ(calls[0]["input"]["command"], "make test 2>&1 | tail -20");
  EXPECT_EQ(calls[1]["name"], "Edit");
  EXPECT_EQ(calls[1]["input"]["new_string"], "i < n");
  // Parameters are redacted: a secret member whole, a bearer token in a string.
  EXPECT_EQ(calls[2]["input"]["api_key"], "[REDACTED]");
  EXPECT_EQ(calls[2]["input"]["command"],
            "curl -H 'Authorization: Bearer [REDACTED]' https://example.com/status");
  EXPECT_EQ(calls[2]["input_truncated"], false);

  std::vector<json> results = OfType(events, "tool_result");
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0]["id"], "toolu_01Run");
  EXPECT_EQ(results[0]["name"], "Bash");
  EXPECT_EQ(results[0]["status"], "ok");
  EXPECT_EQ(results[0]["output"], "FAIL: parse_test (1 of 12)\nexpected 3, got 4");
  EXPECT_EQ(results[1]["output"], "The file /work/src/parse.c has been updated.");
  EXPECT_EQ(results[2]["status"], "error");
  EXPECT_EQ(results[2]["line"], 8);

  // Usage: the blocks of one API message repeat its usage (the latest
  // counts), a new message adds up; the result's totals replace the sum.
  std::vector<json> usage = OfType(events, "usage");
  ASSERT_EQ(usage.size(), 6u);
  EXPECT_EQ(usage[0]["output_tokens"], 2);
  EXPECT_EQ(usage[1]["output_tokens"], 98);
  EXPECT_EQ(usage[1]["input_tokens"], 3);
  EXPECT_EQ(usage[2]["input_tokens"], 9);
  EXPECT_EQ(usage[2]["output_tokens"], 218);
  EXPECT_EQ(usage[2]["cache_read_tokens"], 11865 + 15985);
  EXPECT_EQ(usage[2]["cache_write_tokens"], 4120 + 310);
  EXPECT_FALSE(usage[2].contains("cost_usd"));
  EXPECT_EQ(usage[5]["input_tokens"], 21);
  EXPECT_EQ(usage[5]["output_tokens"], 610);
  EXPECT_EQ(usage[5]["cache_read_tokens"], 60211);
  EXPECT_EQ(usage[5]["cache_write_tokens"], 4790);
  EXPECT_DOUBLE_EQ(usage[5]["cost_usd"].get<double>(), 0.0842315);

  EXPECT_EQ(OfType(events, "reasoning")[0]["text"], "The loop bound is off by one.");
  EXPECT_EQ(OfType(events, "other")[0]["event"], "rate_limit_event");
  EXPECT_EQ(OfType(events, "other")[0]["raw"]["rate_limit_info"]["status"], "allowed");

  const json& result = events.back();
  EXPECT_EQ(result["status"], "success");
  EXPECT_EQ(result["subtype"], "success");
  EXPECT_EQ(result["text"],
            "Fixed the off-by-one in parse.c; all 12 tests pass.\n<promise>DONE</promise>");
  EXPECT_EQ(result["turns"], 5);
  EXPECT_EQ(result["duration_ms"], 48213);
  EXPECT_EQ(result["line"], 11);
}

TEST(ClaudeParserTest, ErrorSubtypeIsAnErrorResult) {
  std::vector<json> events = Parse(AgentKind::kClaude, Sample("claude_max_turns.jsonl"));
  const json& result = events.back();
  EXPECT_EQ(result["type"], "result");
  EXPECT_EQ(result["status"], "error");
  EXPECT_EQ(result["subtype"], "error_max_turns");
  EXPECT_EQ(result["turns"], 2);
}

TEST(CodexParserTest, ExecJsonSampleBecomesTypedEvents) {
  std::vector<json> events = Parse(AgentKind::kCodex, Sample("codex.jsonl"));
  EXPECT_EQ(Types(events), (std::vector<std::string>{
                               "session", "reasoning", "tool_call", "tool_result", "tool_call",
                               "tool_result", "tool_call", "tool_result", "other", "tool_call",
                               "tool_result", "message", "usage", "result"}));
  EXPECT_EQ(events[0]["session_id"], "0199a213-81c0-7800-8aa1-bbab2a035a53");
  std::vector<json> calls = OfType(events, "tool_call");
  EXPECT_EQ(calls[0]["name"], "command_execution");
  EXPECT_EQ(calls[0]["input"]["command"], "bash -lc 'make test'");
  EXPECT_EQ(calls[0]["line"], 4);
  EXPECT_EQ(calls[1]["name"], "file_change");  // only ever completed
  EXPECT_EQ(calls[1]["input"]["changes"][0]["path"], "/work/src/parse.c");
  EXPECT_EQ(calls[2]["name"], "docs.search");
  EXPECT_EQ(calls[2]["input"]["access_token"], "[REDACTED]");
  std::vector<json> results = OfType(events, "tool_result");
  EXPECT_EQ(results[0]["status"], "error");
  EXPECT_EQ(results[0]["output"], "FAIL: parse_test\n\n[exit code 2]");
  EXPECT_EQ(results[1]["status"], "ok");
  EXPECT_EQ(results[2]["name"], "docs.search");
  EXPECT_EQ(results[3]["status"], "ok");
  EXPECT_EQ(OfType(events, "other")[0]["event"], "item.todo_list");
  json usage = OfType(events, "usage")[0];
  EXPECT_EQ(usage["input_tokens"], 24763);
  EXPECT_EQ(usage["cache_read_tokens"], 24448);
  EXPECT_EQ(usage["output_tokens"], 122);
  EXPECT_FALSE(usage.contains("cost_usd"));
  const json& result = events.back();
  EXPECT_EQ(result["status"], "success");
  EXPECT_EQ(result["text"],
            "Fixed the off-by-one in parse.c; the tests pass.\n<promise>DONE</promise>");
  EXPECT_EQ(result["turns"], 1);
  EXPECT_FALSE(result.contains("duration_ms"));
}

TEST(CodexParserTest, FailedTurnIsAnErrorResult) {
  std::vector<json> events = Parse(AgentKind::kCodex, Sample("codex_failed.jsonl"));
  EXPECT_EQ(Types(events), (std::vector<std::string>{"session", "other", "result"}));
  EXPECT_EQ(events[1]["event"], "error");
  EXPECT_EQ(events[2]["status"], "error");
  EXPECT_EQ(events[2]["subtype"], "turn.failed");
  EXPECT_NE(events[2]["text"].get<std::string>().find("could not be refreshed"), std::string::npos);
}

TEST(OpenCodeParserTest, RunJsonSampleBecomesTypedEvents) {
  std::vector<json> events = Parse(AgentKind::kOpenCode, Sample("opencode.jsonl"));
  EXPECT_EQ(Types(events),
            (std::vector<std::string>{"session", "message", "tool_call", "tool_result", "usage",
                                      "tool_call", "tool_result", "tool_call", "tool_result",
                                      "usage", "reasoning", "message", "usage", "result"}));
  EXPECT_EQ(events[0]["session_id"], "ses_494719016ffe85dkDMj0FPRbHK");
  std::vector<json> calls = OfType(events, "tool_call");
  EXPECT_EQ(calls[0]["id"], "toolu_01Tst");
  EXPECT_EQ(calls[0]["name"], "bash");
  EXPECT_EQ(calls[0]["input"]["command"], "make test");
  EXPECT_EQ(calls[1]["name"], "edit");
  std::vector<json> results = OfType(events, "tool_result");
  EXPECT_EQ(results[0]["output"], "FAIL: parse_test\n");
  EXPECT_EQ(results[2]["status"], "error");
  EXPECT_EQ(results[2]["output"], "File not found: /work/src/missing.c");
  std::vector<json> usage = OfType(events, "usage");
  ASSERT_EQ(usage.size(), 3u);
  EXPECT_EQ(usage[1]["input_tokens"], 1520 + 420);
  EXPECT_EQ(usage[1]["output_tokens"], 64 + 90 + 12);
  EXPECT_EQ(usage[1]["cache_read_tokens"], 10240 + 11776);
  EXPECT_EQ(usage[1]["cache_write_tokens"], 512);
  EXPECT_NEAR(usage[2]["cost_usd"].get<double>(), 0.0123 + 0.008 + 0.004, 1e-12);
  const json& result = events.back();
  EXPECT_EQ(result["status"], "success");
  EXPECT_EQ(result["subtype"], "idle");
  EXPECT_EQ(result["text"], "Fixed the off-by-one in parse.c.\n<promise>DONE</promise>");
  EXPECT_EQ(result["turns"], 3);
  EXPECT_EQ(result["duration_ms"], 1767036064900 - 1767036059338);
}

TEST(OpenCodeParserTest, ErrorEventMakesTheResultAnError) {
  std::vector<json> events = Parse(AgentKind::kOpenCode, Sample("opencode_error.jsonl"));
  EXPECT_EQ(Types(events), (std::vector<std::string>{"session", "other", "result"}));
  EXPECT_EQ(events[1]["event"], "error");
  EXPECT_EQ(events[1]["raw"]["error"]["name"], "ProviderAuthError");
  EXPECT_EQ(events[2]["status"], "error");
}

TEST(ParserTest, EverySplitGivesTheSameEvents) {
  for (const char* name : {"claude.jsonl", "claude_max_turns.jsonl"}) {
    ExpectSplitInvariant(AgentKind::kClaude, Sample(name));
  }
  for (const char* name : {"codex.jsonl", "codex_failed.jsonl"}) {
    ExpectSplitInvariant(AgentKind::kCodex, Sample(name));
  }
  for (const char* name : {"opencode.jsonl", "opencode_error.jsonl"}) {
    ExpectSplitInvariant(AgentKind::kOpenCode, Sample(name));
  }
}

TEST(ParserTest, MalformedLinesAreParseErrorsAndParsingGoesOn) {
  std::string bytes =
      "not json at all\n"
      "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n"
      "[1,2,3]\n"
      "{\"no_type\":true}\n"
      "{\"type\":\"assistant\",\"message\":\n"
      "\n"
      "   \r\n"
      "{\"type\": 7}\n"
      "{\"type\":\"x\",\"s\":\"\xff\xfe\"}\n"
      "Authorization: Bearer abcdef123456\n"
      "{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"ok\"}";  // no newline at the end
  for (AgentKind kind : {AgentKind::kClaude, AgentKind::kCodex, AgentKind::kOpenCode}) {
    std::vector<json> events = Parse(kind, bytes);
    std::vector<json> errors = OfType(events, "parse_error");
    ASSERT_EQ(errors.size(), 7u) << AgentKindName(kind);
    EXPECT_EQ(errors[0]["reason"], "not JSON");
    EXPECT_EQ(errors[0]["line"], 1);
    EXPECT_EQ(errors[0]["excerpt"], "not json at all");
    EXPECT_EQ(errors[1]["reason"], "not a JSON object");
    EXPECT_EQ(errors[2]["reason"], "no \"type\" string member");
    EXPECT_EQ(errors[3]["line"], 5);             // cut-off JSON
    EXPECT_EQ(errors[4]["line"], 8);             // blank lines 6 and 7 counted, not reported
    EXPECT_EQ(errors[5]["reason"], "not JSON");  // invalid UTF-8 in a string
    EXPECT_EQ(errors[5]["excerpt"], "{\"type\":\"x\",\"s\":\"??\"}");
    EXPECT_EQ(errors[6]["excerpt"], "Authorization: Bearer [REDACTED]");
    // Every event's JSON dumps (no invalid UTF-8 reaches it).
    for (const json& event : events) EXPECT_FALSE(event.dump().empty());
  }
  std::vector<json> claude = Parse(AgentKind::kClaude, bytes);
  EXPECT_EQ(OfType(claude, "message")[0]["text"], "hi");
  EXPECT_EQ(claude.back()["type"], "result");  // the last line, without '\n', at Finish
  EXPECT_EQ(claude.back()["line"], 11);
}

TEST(ParserTest, OverLongLineIsAParseErrorWithBoundedMemory) {
  EventLimits limits;
  limits.max_line_bytes = 1000;
  std::string huge =
      "{\"type\":\"assistant\",\"message\":{\"content\":\"" + std::string(5000, 'a') + "\"}}\n";
  std::string bytes = huge + "{\"type\":\"result\",\"subtype\":\"success\"}\n";
  std::unique_ptr<EventParser> parser = MakeEventParser(AgentKind::kClaude, limits);
  std::vector<AgentEvent> raw;
  for (size_t at = 0; at < bytes.size(); at += 333) {
    parser->Feed(std::string_view(bytes).substr(at, 333), raw);
  }
  parser->Finish(raw);
  std::vector<json> events = ToJson(raw);
  ASSERT_EQ(Types(events), (std::vector<std::string>{"parse_error", "result"}));
  EXPECT_EQ(
      events[0]["reason"],
      fmt::format("line of {} bytes is longer than the limit of 1000 bytes", huge.size() - 1));
  EXPECT_EQ(events[0]["excerpt"].get<std::string>().size(), limits.max_excerpt_bytes);
  EXPECT_EQ(events[1]["line"], 2);
  // A line exactly at the limit still parses.
  std::string exact = "{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"" +
                      std::string(1000 - 49, 'b') + "\"}";
  ASSERT_EQ(exact.size(), 1000u);
  EXPECT_EQ(Types(Parse(AgentKind::kClaude, exact + "\n", limits)),
            (std::vector<std::string>{"result"}));
}

TEST(ParserTest, DeepNestingIsAParseError) {
  std::string deep =
      "{\"type\":\"x\",\"v\":" + std::string(100000, '[') + std::string(100000, ']') + "}\n";
  std::vector<json> events = Parse(AgentKind::kClaude, deep);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["reason"], "JSON nests 100001 levels deep, more than the limit of 64");
  // Brackets inside strings do not count.
  std::string quoted = "{\"type\":\"x\",\"v\":\"" + std::string(100, '[') + "\"}\n";
  EXPECT_EQ(Types(Parse(AgentKind::kClaude, quoted)), (std::vector<std::string>{"other"}));
}

TEST(ParserTest, LongTextAndParametersAreTruncated) {
  EventLimits limits;
  std::string text(100000, 'x');
  text.replace(limits.max_text_bytes - 1, 3, "\xe2\x82\xac");  // a euro sign across the cut
  json assistant = {
      {"type", "assistant"},
      {"message",
       {{"id", "m"},
        {"content",
         {{{"type", "text"}, {"text", text}},
          {{"type", "tool_use"},
           {"id", "t1"},
           {"name", "Write"},
           {"input", {{"file_path", "/work/a"}, {"content", std::string(3000, 'y')}}}},
          {{"type", "tool_use"},
           {"id", "t2"},
           {"name", "Write"},
           {"input", {{"parts", std::vector<std::string>(20, std::string(1000, 'z'))}}}}}}}}};
  std::vector<json> events = Parse(AgentKind::kClaude, assistant.dump() + "\n");
  ASSERT_EQ(Types(events), (std::vector<std::string>{"message", "tool_call", "tool_call"}));
  EXPECT_EQ(events[0]["truncated"], true);
  EXPECT_EQ(events[0]["text"].get<std::string>().size(), limits.max_text_bytes - 1);
  EXPECT_EQ(events[1]["input_truncated"], true);
  EXPECT_EQ(events[1]["input"]["content"].get<std::string>().size(), limits.max_string_bytes);
  EXPECT_EQ(events[1]["input"]["file_path"], "/work/a");
  // Still too long as a whole: a string excerpt of the parameters' JSON.
  EXPECT_EQ(events[2]["input_truncated"], true);
  ASSERT_TRUE(events[2]["input"].is_string());
  EXPECT_EQ(events[2]["input"].get<std::string>().size(), limits.max_input_bytes);
}

TEST(ParserTest, CommandProfileHasNoEvents) {
  EXPECT_TRUE(Parse(AgentKind::kCommand, Sample("claude.jsonl")).empty());
}

}  // namespace
}  // namespace ralph::agents
