// `ralphctl secure-boot ...`: the firmware's Secure Boot state, and the
// provisioning step that enrolls the owner's keys on a machine in setup
// mode (platform/secure_boot.h, docs/secure-boot.md "Provisioning").
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/efivar_store.h"
#include "platform/file_io.h"
#include "platform/secure_boot.h"
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {
namespace {

constexpr std::string_view kUsage =
    R"(usage: ralphctl secure-boot <subcommand> [options]

subcommands:
  status                      whether the firmware enforces Secure Boot
                              (its SecureBoot and SetupMode variables)
  enroll [--keys DIR]         on a machine in setup mode: enroll the owner's
                              keys from DIR/PK.auth, DIR/KEK.auth, DIR/db.auth
                              (efitools' sign-efi-sig-list output; default
                              /usr/share/ralph/secure-boot); Secure Boot is
                              enforced from the next boot on

options:
  --efivars DIR               use a directory as the EFI variable store
                              (sets EFIVARFS_PATH for libefivar)
  --json                      machine-readable output (status)
)";

constexpr std::string_view kDefaultKeysDir = "/usr/share/ralph/secure-boot";

constexpr OptionSpec kOptions[] = {
    {"--efivars", true},
    {"--keys", true},
    {"--json", false},
    {"--help", false},
};

Result<std::vector<uint8_t>> ReadList(const std::string& dir, std::string_view name) {
  std::string path = fmt::format("{}/{}.auth", dir, name);
  std::string bytes = TRY_CTX(ReadWholeFile(path), fmt::format("the signed {} list", name));
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

}  // namespace

int RunSecureBootCommand(const Invocation& invocation, std::span<const std::string> args) {
  constexpr std::string_view kName = "secure-boot";
  Result<ParsedArgs> parsed = ParseArgs(args, kOptions);
  if (!parsed) return UsageError(kName, parsed.error().message());
  if (parsed->Has("--help")) {
    fmt::print("{}", kUsage);
    return kExitOk;
  }
  if (parsed->positional.empty()) return UsageError(kName, "missing subcommand");
  const std::string verb = parsed->positional[0];
  const std::string command = fmt::format("secure-boot {}", verb);
  if (verb != "status" && verb != "enroll") {
    return UsageError(kName, fmt::format("unknown subcommand \"{}\"", verb));
  }
  if (parsed->positional.size() > 1) {
    return UsageError(command, fmt::format("unexpected argument \"{}\"", parsed->positional[1]));
  }
  if (parsed->Has("--keys") && verb != "enroll") {
    return UsageError(command, "--keys goes with enroll only");
  }
  if (parsed->Has("--json") && verb != "status") {
    return UsageError(command, "--json goes with status only");
  }

  if (std::optional<std::string> dir = parsed->Value("--efivars")) {
    Result<void> use = UseEfivarsDirectory(invocation, *dir);
    if (!use) return Failed(command, use.error());
  }
  Result<std::unique_ptr<LibefivarStore>> store = LibefivarStore::Open();
  if (!store) return Failed(command, store.error().WithContext("opening the EFI variable store"));

  if (verb == "status") {
    Result<SecureBootState> state = ReadSecureBootState(**store);
    if (!state) return Failed(command, state.error());
    if (parsed->Has("--json")) {
      nlohmann::json out = {{"supported", state->supported},
                            {"enabled", state->enabled},
                            {"setup_mode", state->setup_mode}};
      fmt::print("{}\n", out.dump(2));
    } else {
      fmt::print("secure boot: {}\n", DescribeSecureBoot(*state));
    }
    return kExitOk;
  }

  std::string dir = parsed->Value("--keys").value_or(std::string(kDefaultKeysDir));
  SecureBootKeyLists lists;
  struct List {
    std::string_view name;
    std::vector<uint8_t>* data;
  };
  for (const List& list : {List{"PK", &lists.pk}, List{"KEK", &lists.kek}, List{"db", &lists.db}}) {
    Result<std::vector<uint8_t>> read = ReadList(dir, list.name);
    if (!read) return Failed(command, read.error());
    *list.data = std::move(*read);
  }
  Result<void> enrolled = EnrollSecureBootKeys(**store, lists);
  if (!enrolled) return Failed(command, enrolled.error());
  fmt::print("enrolled db, KEK and PK from {}: Secure Boot is enforced from the next boot on\n",
             dir);
  return kExitOk;
}

}  // namespace ralph::ralphctl
