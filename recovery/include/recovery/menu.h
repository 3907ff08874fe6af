// The operator's menu on the serial console: reads a line, parses it
// strictly (recovery/decide.h ParseMenuLine), runs it through Rescue, and
// asks again. Garbage is refused with what was wrong and never ends the
// menu; only the end of input or a reboot does. The console is behind
// MenuIo, so tests drive the menu with scripted lines.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "recovery/decide.h"
#include "recovery/rescue.h"

namespace ralph::recovery {

struct MenuIo {
  // The next line without its newline; nullopt at the end of input.
  std::function<std::optional<std::string>()> read_line;
  std::function<void(const std::string&)> write_line;
  // Before each read of a command (may be empty).
  std::function<void()> prompt;
  // Asks for the reboot (PID 1 does it); the menu then ends.
  std::function<void()> reboot;
};

enum class MenuEnd { kEndOfInput, kRebooting };

// One command; true when it asked for a reboot.
bool RunMenuCommand(Rescue& rescue, const MenuCommand& command, const MenuIo& io);
MenuEnd RunMenu(Rescue& rescue, const MenuIo& io);

}  // namespace ralph::recovery
