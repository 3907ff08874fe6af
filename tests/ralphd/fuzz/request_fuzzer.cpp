// Fuzzes DecodeRequest: the first line of the input is "VERB PATH", the
// rest the body; every input must decode or be refused with an error, never
// crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "services/ralphd/commands.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t newline = input.find('\n');
  std::string_view head = input.substr(0, newline);
  std::string_view body = newline == std::string_view::npos ? "" : input.substr(newline + 1);
  size_t space = head.find(' ');
  ralph::ralphd::Request request{
      .verb = std::string(head.substr(0, space)),
      .path = space == std::string_view::npos ? "/v1/jobs" : std::string(head.substr(space + 1)),
      .body = std::string(body)};
  ralph::Result<ralph::ralphd::Command> command = ralph::ralphd::DecodeRequest(request);
  if (command) (void)ralph::ralphd::CommandName(*command);
  return 0;
}
