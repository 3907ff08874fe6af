#include <cstdio>
#include <cstdlib>
#include <deque>

#include <fmt/format.h>

#include "platform/cli.h"
#include "platform/efivar_store.h"
#include "platform/file_io.h"
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {
namespace {

void PrintHelp(FILE* to) {
  fmt::print(to,
             "usage: ralphctl [--remote https://HOST:PORT [--identity DIR]] <command> "
             "[arguments]\n\ncommands:\n");
  for (const Command& command : Commands()) {
    fmt::print(to, "  {:<10} {}\n", command.name, command.summary);
  }
  fmt::print(
      to,
      "\n`ralphctl <command> --help` describes a command. --remote runs ralphd's commands "
      "(status, job, policy, audit, memory)\non an appliance over HTTPS with the client identity "
      "`ralphctl remote pair` stored.\n");
}

// The global options before the command: "--remote URL", "--remote=URL",
// "--identity DIR". They are handed to the command as its own options
// (after its name), so a command that does not take them refuses them.
bool IsGlobalOption(std::string_view arg) {
  return arg == "--remote" || arg == "--identity" || arg.starts_with("--remote=") ||
         arg.starts_with("--identity=");
}

}  // namespace

std::optional<std::string> ParsedArgs::Value(std::string_view name) const {
  auto it = options.find(name);
  if (it == options.end()) return std::nullopt;
  return it->second;
}

Result<ParsedArgs> ParseArgs(std::span<const std::string> args, std::span<const OptionSpec> specs) {
  // Each command prints its own usage for --help (a flag in its specs).
  cli::Parser parser("ralphctl");
  std::deque<bool> flags;  // stable addresses for the parser
  std::deque<std::optional<std::string>> values;
  for (const OptionSpec& spec : specs) {
    if (spec.takes_value) {
      parser.Option(spec.name, &values.emplace_back());
    } else {
      parser.Flag(spec.name, &flags.emplace_back(false));
    }
  }
  ParsedArgs parsed;
  parser.Operands(&parsed.positional);
  TRY(parser.TryParse(args));
  for (const OptionSpec& spec : specs) {
    if (spec.takes_value) {
      std::optional<std::string>& value = values.front();
      if (value) parsed.options[std::string(spec.name)] = *value;
      values.pop_front();
    } else {
      if (flags.front()) parsed.options[std::string(spec.name)] = "";
      flags.pop_front();
    }
  }
  return parsed;
}

int UsageError(std::string_view command, std::string_view message) {
  std::string_view top = command.substr(0, command.find(' '));
  fmt::print(stderr, "ralphctl {}: {}\n(see `ralphctl {} --help`)\n", command, message, top);
  return kExitUsage;
}

std::optional<int> ParseSubcommand(std::string_view command, std::span<const std::string> args,
                                   std::span<const OptionSpec> options, std::string_view usage,
                                   ParsedArgs& parsed) {
  Result<ParsedArgs> result = ParseArgs(args, options);
  if (!result) return UsageError(command, result.error().message());
  parsed = std::move(*result);
  if (parsed.Has("--help") || parsed.positional.empty()) {
    fmt::print("{}", usage);
    return parsed.Has("--help") ? kExitOk : kExitUsage;
  }
  return std::nullopt;
}

int Failed(std::string_view command, const Error& error) {
  // Library errors carry their own context ("mark-active: slot A: ...");
  // the command name is added only when the message does not start with it.
  std::string_view verb = command.substr(command.find(' ') + 1);
  if (error.message().rfind(std::string(verb) + ":", 0) == 0) {
    fmt::print(stderr, "ralphctl: {}\n", error.ToString());
  } else {
    fmt::print(stderr, "ralphctl {}: {}\n", command, error.ToString());
  }
  return kExitFailed;
}

std::string ReadProcCmdline() {
  return ReadWholeFile("/proc/cmdline").value_or(std::string());
}

Result<void> UseEfivarsDirectory(const Invocation& invocation, const std::string& dir) {
  // execv's argv is char* const[] for C compatibility; it does not write
  // through the pointers, so the const_cast is safe.
  std::vector<char*> argv;
  for (const std::string& arg : invocation.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  TRY_CTX(UseEfivarfsPathOrReexec(dir, argv.data()), "--efivars " + dir);
  return {};
}

int Main(const Invocation& invocation) {
  std::vector<std::string> globals;
  size_t at = 1;
  while (at < invocation.argv.size() && IsGlobalOption(invocation.argv[at])) {
    const std::string& arg = invocation.argv[at++];
    globals.push_back(arg);
    if (arg.find('=') == std::string::npos) {
      if (at == invocation.argv.size()) {
        fmt::print(stderr, "ralphctl: {} needs a value\n", arg);
        return kExitUsage;
      }
      globals.push_back(invocation.argv[at++]);
    }
  }
  if (at >= invocation.argv.size()) {
    PrintHelp(stderr);
    return kExitUsage;
  }
  std::string_view name = invocation.argv[at];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintHelp(stdout);
    return kExitOk;
  }
  std::vector<std::string> args = globals;
  args.insert(args.end(), invocation.argv.begin() + static_cast<ptrdiff_t>(at) + 1,
              invocation.argv.end());
  for (const Command& command : Commands()) {
    if (command.name == name) return command.run(invocation, args);
  }
  fmt::print(stderr, "ralphctl: unknown command \"{}\"\n", name);
  PrintHelp(stderr);
  return kExitUsage;
}

}  // namespace ralph::ralphctl
