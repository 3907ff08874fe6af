// ralphctl: a thin main; see services/ralphctl/command.h.
#include <csignal>

#include "platform/log.h"
#include "services/ralphctl/command.h"

int main(int argc, char** argv) {
  ralph::LogInit("ralphctl", ralph::LogSink::kStderr);
  // A peer that closes mid-write (an appliance refusing an upload from its
  // header) is an error to report, not a reason to die.
  std::signal(SIGPIPE, SIG_IGN);
  ralph::ralphctl::Invocation invocation;
  invocation.argv.assign(argv, argv + argc);
  return ralph::ralphctl::Main(invocation);
}
