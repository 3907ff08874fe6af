#include "recovery/menu.h"

#include <fmt/format.h>

namespace ralph::recovery {

bool RunMenuCommand(Rescue& rescue, const MenuCommand& command, const MenuIo& io) {
  auto show = [&](const Result<std::string>& done) {
    io.write_line(done ? *done : "failed: " + done.error().ToString());
    return done.has_value();
  };
  switch (command.verb) {
    case MenuVerb::kHelp:
      for (const auto& line : MenuHelp()) io.write_line(line);
      return false;
    case MenuVerb::kStatus: {
      auto diagnosis = rescue.Diagnose();
      if (!diagnosis) {
        io.write_line("failed: " + diagnosis.error().ToString());
        return false;
      }
      for (const auto& line : DescribeDiagnosis(*diagnosis)) io.write_line(line);
      return false;
    }
    case MenuVerb::kAuto: {
      auto diagnosis = rescue.Diagnose();
      if (!diagnosis) {
        io.write_line("failed: " + diagnosis.error().ToString());
        return false;
      }
      Decision decision = Decide(*diagnosis);
      auto done = rescue.Apply(decision);
      if (!done) {
        io.write_line("failed: " + done.error().ToString());
        return false;
      }
      for (const auto& line : *done) io.write_line(line);
      if (decision.wait_for_operator) io.write_line(*decision.wait_for_operator);
      bool reboot =
          !decision.actions.empty() && decision.actions.back().kind == ActionKind::kReboot;
      if (reboot) io.reboot();
      return reboot;
    }
    case MenuVerb::kRestore: show(rescue.Restore(*command.slot, command.argument)); return false;
    case MenuVerb::kRepairBoot: show(rescue.RepairEntries()); return false;
    case MenuVerb::kExportLogs: show(rescue.ExportLogs(command.argument)); return false;
    case MenuVerb::kResetVar: {
      io.write_line(fmt::format(
          "this erases VAR: the audit log, pairings, jobs and workspaces. Type {} to confirm:",
          kResetConfirmation));
      std::optional<std::string> answer = io.read_line();
      if (answer) {
        while (!answer->empty() && (answer->back() == '\r' || answer->back() == ' ')) {
          answer->pop_back();
        }
      }
      if (!answer || *answer != kResetConfirmation) {
        io.write_line("not confirmed: VAR left as it is");
        return false;
      }
      show(rescue.ResetVar());
      return false;
    }
    case MenuVerb::kReboot: {
      if (!show(rescue.CheckReboot(command.slot))) return false;
      io.reboot();
      return true;
    }
  }
  return false;
}

MenuEnd RunMenu(Rescue& rescue, const MenuIo& io) {
  io.write_line("RalphOS RECOVERY menu (type help)");
  for (;;) {
    if (io.prompt) io.prompt();
    std::optional<std::string> line = io.read_line();
    if (!line) return MenuEnd::kEndOfInput;
    auto command = ParseMenuLine(*line);
    if (!command) {
      if (command.error().code() != ErrorCode::kNotFound) {
        io.write_line("refused: " + command.error().message());
      }
      continue;
    }
    if (RunMenuCommand(rescue, *command, io)) return MenuEnd::kRebooting;
  }
}

}  // namespace ralph::recovery
