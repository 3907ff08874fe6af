// ralphctl: a thin main; see services/ralphctl/command.h.
#include "platform/log.h"
#include "services/ralphctl/command.h"

int main(int argc, char** argv) {
  ralph::LogInit("ralphctl", ralph::LogSink::kStderr);
  ralph::ralphctl::Invocation invocation;
  invocation.argv.assign(argv, argv + argc);
  return ralph::ralphctl::Main(invocation);
}
