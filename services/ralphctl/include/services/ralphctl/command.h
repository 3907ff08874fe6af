// ralphctl's command table and the helpers every command shares.
//
// Adding a top-level command (e.g. `ralphctl update`):
//   1. write services/ralphctl/src/update_command.cpp defining
//        int RunUpdateCommand(const Invocation& invocation,
//                             std::span<const std::string> args);
//   2. declare it below, next to RunBootCommand;
//   3. add one line to the table in src/commands.cpp;
//   4. add the .cpp to SOURCES in services/ralphctl/CMakeLists.txt.
//
// Exit codes: 0 success, 1 the operation failed (the error is printed once,
// with its context), 2 a bad command line (unknown command, option or slot
// name; a malformed value) — nothing was done.
#pragma once

#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/error.h"
#include "platform/result.h"

namespace ralph::ralphctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

struct Invocation {
  // The whole command line, argv[0] first (kept for re-executing, see
  // UseEfivarsDirectory).
  std::vector<std::string> argv;
};

// `args` are the arguments after the command's name.
using CommandFunction = int (*)(const Invocation& invocation, std::span<const std::string> args);

struct Command {
  std::string_view name;     // "boot"
  std::string_view summary;  // one line for `ralphctl --help`
  CommandFunction run;
};

// Every top-level command, in the order `--help` lists them.
std::span<const Command> Commands();

// ralphctl's main: dispatches argv[1] through the table.
int Main(const Invocation& invocation);

// The commands (one file each).
int RunBootCommand(const Invocation& invocation, std::span<const std::string> args);
int RunUpdateCommand(const Invocation& invocation, std::span<const std::string> args);
int RunAuditCommand(const Invocation& invocation, std::span<const std::string> args);
// UEFI Secure Boot: the state, enrolling the owner's keys (src/secure_boot_command.cpp).
int RunSecureBootCommand(const Invocation& invocation, std::span<const std::string> args);
// ralphd's commands over its local socket (src/ralphd_commands.cpp).
int RunStatusCommand(const Invocation& invocation, std::span<const std::string> args);
int RunJobCommand(const Invocation& invocation, std::span<const std::string> args);
int RunPolicyCommand(const Invocation& invocation, std::span<const std::string> args);
int RunMemoryCommand(const Invocation& invocation, std::span<const std::string> args);
int RunPairCommand(const Invocation& invocation, std::span<const std::string> args);
int RunPairingsCommand(const Invocation& invocation, std::span<const std::string> args);
// The agent image on VAR, through ralphd (src/agent_image_command.cpp).
int RunAgentImageCommand(const Invocation& invocation, std::span<const std::string> args);
int RunCredsCommand(const Invocation& invocation, std::span<const std::string> args);
// The operator's break-glass into RECOVERY, through ralphd (src/recovery_command.cpp).
int RunRecoveryCommand(const Invocation& invocation, std::span<const std::string> args);
// The client side of the HTTPS API: pairing from a host (src/remote_command.cpp).
int RunRemoteCommand(const Invocation& invocation, std::span<const std::string> args);

// --- Shared helpers (src/cli.cpp) ---

// An option a command accepts: "--json" (a flag) or "--tries N" (a value,
// also spelled "--tries=N").
struct OptionSpec {
  std::string_view name;
  bool takes_value = false;
};

struct ParsedArgs {
  std::map<std::string, std::string, std::less<>> options;  // "--tries" -> "3"; flags -> ""
  std::vector<std::string> positional;

  bool Has(std::string_view name) const { return options.count(name) > 0; }
  std::optional<std::string> Value(std::string_view name) const;
};

// Parsed by cli::Parser (platform/cli.h), as every binary's command line:
// kInvalidArgument naming an unknown option or a value-less one. "--" ends
// the options.
Result<ParsedArgs> ParseArgs(std::span<const std::string> args, std::span<const OptionSpec> specs);

// Prints "ralphctl <command>: <message>" and a pointer to --help to stderr;
// returns kExitUsage.
int UsageError(std::string_view command, std::string_view message);

// How a command with subcommands starts: `args` parsed against `options`
// into `parsed` (a bad option is a usage error naming it); --help prints
// `usage` and exits 0, no subcommand prints it and exits 2. Returns the exit
// status when the command is over, std::nullopt to go on.
std::optional<int> ParseSubcommand(std::string_view command, std::span<const std::string> args,
                                   std::span<const OptionSpec> options, std::string_view usage,
                                   ParsedArgs& parsed);
// Prints "ralphctl <command>: <error>" to stderr (once: without the command
// when the message already starts with it); returns kExitFailed.
int Failed(std::string_view command, const Error& error);

// The running kernel's command line; empty when /proc/cmdline cannot be read.
std::string ReadProcCmdline();

// Points libefivar at a directory store (platform/efivar_store.h
// UseEfivarfsPathOrReexec): EFIVARFS_PATH=<dir>/. libefivar
// reads EFIVARFS_PATH once, before main() (see platform/efivar_store.h), so
// when the process did not start with that value this sets it and
// re-executes /proc/self/exe with the same argv; it returns only when the
// value was already in place, or with an error (kNotFound when `dir` does
// not exist, kInvalidArgument when it is not a directory).
Result<void> UseEfivarsDirectory(const Invocation& invocation, const std::string& dir);

}  // namespace ralph::ralphctl
