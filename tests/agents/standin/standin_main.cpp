// ralph-agent-standin: a stand-in for `claude -p` that speaks Claude Code's
// stream-json and needs no network or account, for loop-mode tests. Each run
// is one iteration on the workspace (its cwd):
//
//   ralph-agent-standin -p --output-format stream-json --verbose
//       --dangerously-skip-permissions [--model M] [--max-turns N] [--] PROMPT
//
// Run i (its count kept in .standin/state.json in the workspace) writes
// notes/step-<i>.txt and appends a line to PROGRESS.md, prints a system/init
// message, assistant text, a Write tool call and its result, and a result
// message with fixed usage (input 1000, output 200, cache read 3000, cache
// write 500 tokens, $0.01). Run K prints the completion promise in its last
// text and in the result; later runs change nothing and print it again.
//
// Environment (all optional):
//   RALPH_STANDIN_ITERATIONS   K, default 3
//   RALPH_STANDIN_PROMISE      default "<promise>DONE</promise>"
//   RALPH_STANDIN_STALL_AFTER  N: runs after the N-th change nothing at all
//                              (not even the state) and never finish
//   RALPH_STANDIN_STOP_FILE    a path (relative to the workspace) written at run K
//   RALPH_STANDIN_REMOVE_PREVIOUS  set: run i > 1 also deletes notes/step-<i-1>.txt
//                              (a run that removes a file as well as adding one)
//
// Linked statically and with no library beyond the C++ standard library and
// the JSON header, so it runs in any root (the agent image, busybox).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using nlohmann::json;

constexpr const char* kModel = "claude-standin-1";
constexpr const char* kStateFile = ".standin/state.json";

void Print(const json& message) {
  std::cout << message.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
}

int Usage(const std::string& message) {
  std::cerr << "error: " << message << '\n';
  return 1;
}

std::optional<unsigned long> EnvNumber(const char* name) {
  const char* value = std::getenv(name);
  if (!value || !*value) return std::nullopt;
  char* end = nullptr;
  unsigned long n = std::strtoul(value, &end, 10);
  if (*end != '\0') return std::nullopt;
  return n;
}

std::string EnvString(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value ? std::string(value) : fallback;
}

bool WriteFile(const std::filesystem::path& path, const std::string& content, bool append) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  std::ofstream out(path, append ? std::ios::app : std::ios::trunc);
  out << content;
  out.close();
  return static_cast<bool>(out);
}

unsigned long ReadIteration() {
  std::ifstream in(kStateFile);
  if (!in) return 0;
  std::stringstream text;
  text << in.rdbuf();
  json state = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!state.is_object() || !state.contains("iteration") ||
      !state["iteration"].is_number_unsigned()) {
    return 0;
  }
  return state["iteration"].get<unsigned long>();
}

json Usage(unsigned long output_tokens) {
  return {{"input_tokens", 1000},
          {"cache_creation_input_tokens", 500},
          {"cache_read_input_tokens", 3000},
          {"output_tokens", output_tokens},
          {"service_tier", "standard"}};
}

json Assistant(const std::string& session, const std::string& id, json content,
               unsigned long output_tokens) {
  return {{"type", "assistant"},
          {"message",
           {{"model", kModel},
            {"id", id},
            {"type", "message"},
            {"role", "assistant"},
            {"content", std::move(content)},
            {"stop_reason", nullptr},
            {"usage", Usage(output_tokens)}}},
          {"parent_tool_use_id", nullptr},
          {"session_id", session}};
}

}  // namespace

int main(int argc, char** argv) {
  bool print = false, verbose = false, skip_permissions = false;
  std::string format = "text";
  std::optional<std::string> prompt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    if (arg == "-p" || arg == "--print") {
      print = true;
    } else if (arg == "--verbose") {
      verbose = true;
    } else if (arg == "--dangerously-skip-permissions") {
      skip_permissions = true;
    } else if (arg == "--output-format" || arg == "--model" || arg == "--max-turns") {
      std::optional<std::string> v = value();
      if (!v) return Usage("option '" + arg + "' argument missing");
      if (arg == "--output-format") format = *v;
    } else if (arg == "--") {
      if (i + 1 < argc) prompt = argv[++i];
      if (i + 1 < argc) return Usage("too many arguments after '--'");
    } else if (!arg.empty() && arg[0] == '-') {
      return Usage("unknown option '" + arg + "'");
    } else if (!prompt) {
      prompt = arg;
    } else {
      return Usage("too many arguments");
    }
  }
  if (!print) return Usage("the stand-in runs only in print mode (-p)");
  if (format != "stream-json") return Usage("the stand-in writes only --output-format stream-json");
  if (!verbose) {
    return Usage("When using --print, --output-format=stream-json requires --verbose");
  }
  if (!prompt) {
    std::stringstream in;
    in << std::cin.rdbuf();
    prompt = in.str();
  }
  if (prompt->empty())
    return Usage(
        "Input must be provided either through stdin or as a prompt argument when using --print");

  unsigned long total = EnvNumber("RALPH_STANDIN_ITERATIONS").value_or(3);
  std::optional<unsigned long> stall_after = EnvNumber("RALPH_STANDIN_STALL_AFTER");
  std::string promise = EnvString("RALPH_STANDIN_PROMISE", "<promise>DONE</promise>");
  std::string stop_file = EnvString("RALPH_STANDIN_STOP_FILE", "");
  std::string first_line = prompt->substr(0, prompt->find('\n'));

  unsigned long done = ReadIteration();
  unsigned long iteration = done + 1;
  bool stalled = stall_after && done >= *stall_after;
  bool finished = done >= total;
  std::string session = "standin-session-" + std::to_string(iteration);
  std::string step = "notes/step-" + std::to_string(iteration) + ".txt";
  std::string step_content =
      "iteration " + std::to_string(iteration) + "\nprompt: " + first_line + "\n";

  char cwd[4096] = "";
  if (!::getcwd(cwd, sizeof cwd)) cwd[0] = '\0';
  Print({{"type", "system"},
         {"subtype", "init"},
         {"cwd", cwd},
         {"session_id", session},
         {"tools", {"Bash", "Read", "Edit", "Write"}},
         {"mcp_servers", json::array()},
         {"model", kModel},
         {"permissionMode", skip_permissions ? "bypassPermissions" : "default"},
         {"apiKeySource", "none"},
         {"claude_code_version", "0.0.0-standin"}});

  std::string id = "msg_standin_" + std::to_string(iteration);
  std::string text;
  int turns = 1;
  if (finished || stalled) {
    text = finished ? "Nothing left to do.\n" + promise : "No progress possible.";
    Print(Assistant(session, id + "_a", {{{"type", "text"}, {"text", text}}}, 200));
  } else {
    turns = 2;
    Print(Assistant(session, id + "_a",
                    {{{"type", "text"},
                      {"text", "Iteration " + std::to_string(iteration) + " of " +
                                   std::to_string(total) + ": " + first_line}}},
                    100));
    std::string tool_id = "toolu_standin_" + std::to_string(iteration);
    Print(Assistant(session, id + "_a",
                    {{{"type", "tool_use"},
                      {"id", tool_id},
                      {"name", "Write"},
                      {"input", {{"file_path", step}, {"content", step_content}}}}},
                    150));
    bool wrote =
        WriteFile(step, step_content, false) &&
        WriteFile("PROGRESS.md", "- iteration " + std::to_string(iteration) + "\n", true) &&
        WriteFile(kStateFile, json{{"iteration", iteration}}.dump() + "\n", false);
    if (iteration > 1 && std::getenv("RALPH_STANDIN_REMOVE_PREVIOUS")) {
      std::error_code ec;
      std::filesystem::remove("notes/step-" + std::to_string(iteration - 1) + ".txt", ec);
      wrote = wrote && !ec;
    }
    if (iteration == total && !stop_file.empty())
      wrote = wrote && WriteFile(stop_file, "done\n", false);
    Print({{"type", "user"},
           {"message",
            {{"role", "user"},
             {"content",
              {{{"tool_use_id", tool_id},
                {"type", "tool_result"},
                {"content",
                 wrote ? "File created successfully at: " + step : "Error writing " + step},
                {"is_error", !wrote}}}}}},
           {"parent_tool_use_id", nullptr},
           {"session_id", session}});
    text = iteration == total ? "All " + std::to_string(total) + " iterations done.\n" + promise
                              : "Iteration " + std::to_string(iteration) + " done; more to do.";
    Print(Assistant(session, id + "_b", {{{"type", "text"}, {"text", text}}}, 200));
  }
  Print({{"type", "result"},
         {"subtype", "success"},
         {"is_error", false},
         {"duration_ms", 1500},
         {"duration_api_ms", 1200},
         {"num_turns", turns},
         {"result", text},
         {"session_id", session},
         {"total_cost_usd", 0.01},
         {"usage", Usage(200)},
         {"permission_denials", json::array()}});
  std::cout.flush();
  return std::cout ? 0 : 1;
}
