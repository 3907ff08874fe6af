// The only translation unit that sees CLI11; built with -fexceptions (see
// platform/CMakeLists.txt). Every CLI11 exception is caught here and turned
// into a Result: none crosses the interface in platform/cli.h.
#include "platform/cli.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <map>

#include <fmt/format.h>

namespace ralph::cli {

struct Parser::Impl {
  std::string name;
  std::string usage;
  CLI::App app;
  // Names as given (first spelling of each), for the checks CLI11 words
  // differently or does not make.
  std::vector<std::string> flag_names;
  std::vector<std::string> value_names;
  std::vector<std::pair<CLI::Option*, std::optional<std::string>*>> optionals;
  struct OrderedOption {
    std::string name;
    std::vector<std::string> values;  // filled by CLI11
    std::vector<std::pair<std::string, std::string>>* occurrences;
  };
  std::vector<std::pair<CLI::Option*, std::unique_ptr<OrderedOption>>> ordered;
  std::vector<std::string>* operands = nullptr;
};

namespace {

// "-o,--out" -> {"-o", "--out"}.
std::vector<std::string> Spellings(std::string_view names) {
  std::vector<std::string> out;
  while (!names.empty()) {
    size_t comma = names.find(',');
    out.emplace_back(names.substr(0, comma));
    if (comma == std::string_view::npos) break;
    names.remove_prefix(comma + 1);
  }
  return out;
}

Error Usage(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

}  // namespace

Parser::Parser(std::string name, std::string usage) : impl_(std::make_unique<Impl>()) {
  impl_->name = std::move(name);
  impl_->usage = std::move(usage);
  CLI::App& app = impl_->app;
  if (impl_->usage.empty()) {
    app.set_help_flag();
  } else {
    app.set_help_flag("-h,--help");
  }
  // Unknown options are left in remaining() and reported by TryParse in the
  // tree's words.
  app.allow_extras(true);
}

Parser::~Parser() = default;
Parser::Parser(Parser&&) noexcept = default;

void Parser::Flag(std::string_view names, bool* set) {
  for (std::string& spelling : Spellings(names)) impl_->flag_names.push_back(std::move(spelling));
  impl_->app.add_flag(std::string(names), *set);
}

void Parser::Option(std::string_view names, std::string* value) {
  for (std::string& spelling : Spellings(names)) impl_->value_names.push_back(std::move(spelling));
  impl_->app.add_option(std::string(names), *value)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

void Parser::Option(std::string_view names, std::optional<std::string>* value) {
  for (std::string& spelling : Spellings(names)) impl_->value_names.push_back(std::move(spelling));
  CLI::Option* option = impl_->app.add_option(std::string(names))
                            ->expected(1)
                            ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  impl_->optionals.emplace_back(option, value);
}

void Parser::Repeated(std::string_view names, std::vector<std::string>* values) {
  for (std::string& spelling : Spellings(names)) impl_->value_names.push_back(std::move(spelling));
  // One value an occurrence, any number of occurrences.
  impl_->app.add_option(std::string(names), *values)->allow_extra_args(false);
}

void Parser::Ordered(std::string_view names,
                     std::vector<std::pair<std::string, std::string>>* occurrences) {
  std::vector<std::string> spellings = Spellings(names);
  auto ordered = std::make_unique<Impl::OrderedOption>();
  ordered->name = spellings.front();
  ordered->occurrences = occurrences;
  for (std::string& spelling : spellings) impl_->value_names.push_back(std::move(spelling));
  CLI::Option* option =
      impl_->app.add_option(std::string(names), ordered->values)->allow_extra_args(false);
  impl_->ordered.emplace_back(option, std::move(ordered));
}

void Parser::Operands(std::vector<std::string>* values) {
  impl_->operands = values;
  impl_->app.add_option("operands", *values);
}

Result<ParseOutcome> Parser::TryParse(std::span<const std::string> args) {
  // What CLI11 would word its own way (or accept: "--flag=value"), checked
  // first so that the message names the flag.
  auto is = [](const std::vector<std::string>& names, std::string_view arg) {
    return std::find(names.begin(), names.end(), arg) != names.end();
  };
  bool help = false;
  // "--" ends the options; what follows are operands, whatever they look
  // like (handed to the operands here, not to CLI11).
  size_t options_end = args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg == "--") {
      options_end = i;
      break;
    }
    if (!impl_->usage.empty() && (arg == "--help" || arg == "-h")) help = true;
    std::string_view name = arg.substr(0, arg.find('='));
    if (name.size() < arg.size() && is(impl_->flag_names, name)) {
      return Usage(fmt::format("option {} takes no value", name));
    }
    if (is(impl_->value_names, arg)) {
      if (i + 1 == args.size()) return Usage(fmt::format("option {} needs a value", arg));
      ++i;  // its value, whatever it looks like
    }
  }
  if (help) {
    std::fputs(impl_->usage.c_str(), stdout);
    return ParseOutcome::kHelpShown;
  }
  // CLI11 takes the arguments in reverse order. "--name=VALUE" goes to it as
  // "--name" "VALUE": it reads "--name=" as a missing value, not an empty one.
  std::vector<std::string> reversed;
  for (size_t i = options_end; i-- > 0;) {
    std::string_view arg = args[i];
    size_t eq = arg.find('=');
    if (arg.starts_with("--") && eq != std::string_view::npos &&
        is(impl_->value_names, arg.substr(0, eq))) {
      reversed.emplace_back(arg.substr(eq + 1));
      reversed.emplace_back(arg.substr(0, eq));
    } else {
      reversed.emplace_back(arg);
    }
  }
  try {
    impl_->app.parse(reversed);
  } catch (const CLI::ParseError& error) {
    return Usage(error.what());
  }
  std::vector<std::string> remaining = impl_->app.remaining();
  for (const std::string& extra : remaining) {
    if (extra.size() > 1 && extra[0] == '-') {
      return Usage(fmt::format("unknown option {}", extra.substr(0, extra.find('='))));
    }
  }
  if (options_end < args.size()) {
    if (!impl_->operands) {
      if (options_end + 1 < args.size()) remaining.push_back(args[options_end + 1]);
    } else {
      impl_->operands->insert(impl_->operands->end(), args.begin() + options_end + 1, args.end());
    }
  }
  if (!remaining.empty()) return Usage(fmt::format("unexpected argument \"{}\"", remaining[0]));
  for (auto& [option, value] : impl_->optionals) {
    if (option->count() > 0) *value = option->as<std::string>();
  }
  // parse_order(): one entry per occurrence, in command-line order.
  std::map<const CLI::Option*, size_t> taken;
  for (const CLI::Option* option : impl_->app.parse_order()) {
    for (auto& [candidate, ordered] : impl_->ordered) {
      if (candidate != option) continue;
      size_t index = taken[option]++;
      if (index < ordered->values.size()) {
        ordered->occurrences->emplace_back(ordered->name, ordered->values[index]);
      }
    }
  }
  return ParseOutcome::kRun;
}

std::optional<int> Parser::Parse(std::span<const std::string> args) {
  Result<ParseOutcome> outcome = TryParse(args);
  if (!outcome) return UsageError(outcome.error().message());
  if (*outcome == ParseOutcome::kHelpShown) return 0;
  return std::nullopt;
}

std::optional<int> Parser::Parse(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  return Parse(args);
}

int Parser::UsageError(std::string_view message) const {
  std::fputs(fmt::format("{}: {}\n(see `{} --help`)\n", impl_->name, message, impl_->name).c_str(),
             stderr);
  return kExitUsage;
}

}  // namespace ralph::cli
