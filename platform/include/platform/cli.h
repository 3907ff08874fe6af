// Command-line parsing for every binary of the tree, over CLI11.
//
// Why a wrapper: CLI11 reports errors by throwing, and the tree builds with
// -fno-exceptions. Its use is confined to src/cli.cpp, the one translation
// unit built with exceptions, behind this exception-free interface; every
// binary parses the same way: "--name VALUE" or "--name=VALUE", flags
// without values, operands anywhere, "--" ends the options, -h/--help prints
// the binary's own usage text verbatim, and a usage error exits with 2 and a
// message naming what was wrong:
//
//   cli::Parser parser("ralph-firmware-sim", kUsage);
//   std::string disk;
//   parser.Option("--disk", &disk);
//   if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;
//   if (disk.empty()) return parser.UsageError("--disk is required");
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::cli {

inline constexpr int kExitUsage = 2;

enum class ParseOutcome { kRun, kHelpShown };

class Parser {
 public:
  // `name` as messages show it ("ralphctl boot"). A non-empty `usage` is
  // what -h/--help prints; with an empty one, -h/--help are not special (a
  // caller may register "--help" as a flag).
  explicit Parser(std::string name, std::string usage = {});
  ~Parser();
  Parser(Parser&&) noexcept;
  Parser& operator=(Parser&&) = delete;

  // `names`: "--json", or "-o,--out" for a short and a long spelling. The
  // pointers are written by Parse and must outlive it.
  void Flag(std::string_view names, bool* set);
  // An option with a value; given twice, the last one counts.
  void Option(std::string_view names, std::string* value);
  void Option(std::string_view names, std::optional<std::string>* value);
  // An option that may be repeated ("--env A --env B"), one value each.
  void Repeated(std::string_view names, std::vector<std::string>* values);
  // A repeatable option whose occurrences keep their order among those of
  // the other options sharing `occurrences`: each is appended as {the first
  // spelling in `names`, its value} ("--bind" and "--ro-bind" mounts in
  // command-line order).
  void Ordered(std::string_view names,
               std::vector<std::pair<std::string, std::string>>* occurrences);
  // The operands (arguments that are not options, and everything after
  // "--"), in order. Without it an operand is a usage error.
  void Operands(std::vector<std::string>* values);

  // Parses `args` (without the program name). kInvalidArgument naming the
  // bad flag ("unknown option --frobnicate", "option --limit needs a
  // value", "option --json takes no value", "unexpected argument \"x\"").
  // kHelpShown when -h/--help was given (with a usage text): nothing else is
  // checked, and the usage has been printed to stdout.
  Result<ParseOutcome> TryParse(std::span<const std::string> args);

  // For a main: std::nullopt to go on; else the exit status to return: 0
  // after the help, kExitUsage after a usage error (printed to stderr as
  // UsageError does).
  std::optional<int> Parse(int argc, char** argv);
  std::optional<int> Parse(std::span<const std::string> args);

  // Prints "<name>: <message>" and "(see `<name> --help`)" to stderr;
  // returns kExitUsage. For errors found after parsing (a malformed value, a
  // missing option).
  int UsageError(std::string_view message) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ralph::cli
