// ralph-test-hang: the PID 1 of the "hang" slot variant (test images only).
// It stands for a userspace that hangs after early boot: it never pets the
// watchdog early boot armed, so the machine must be reset by it.
#include <unistd.h>

#include "platform/log.h"

int main() {
  ralph::LogInit("ralph-test-hang", ralph::LogSink::kKmsg);
  ralph::LogError("userspace hung after early boot (test variant): waiting for the watchdog");
  for (;;) ::pause();
}
