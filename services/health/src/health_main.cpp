// ralph-health: the commit gate, run by ralph-init once the services are
// started (services/health/gate.h says what it decides). This wires the
// real machine: NVRAM through libefivar, the appliance disk, the kernel
// command line, the steady clock, ralphd through ralphctl and the API
// client, and PID 1 for the reboot.

#include <map>
#include <optional>

#include <fmt/format.h>

#include "boot/boot_config.h"
#include "boot/boot_failures.h"
#include "platform/efivar_store.h"
#include "platform/file_io.h"
#include "platform/log.h"
#include "services/health/checks.h"
#include "services/health/control_plane.h"
#include "services/health/gate.h"
#include "services/health/slot_gate.h"

namespace {

using namespace ralph;

std::map<std::string, std::string> EarlyBootRecord(const health::HealthEnvironment& env) {
  auto text = ReadWholeFile(env.early_boot_record);
  return text ? boot::ParseRecord(*text) : std::map<std::string, std::string>();
}

Result<std::string> ReadCmdline() {
  return ReadWholeFile("/proc/cmdline");
}

// libefivar's store, opened at its first use: a RECOVERY boot never opens
// it, and an NVRAM that cannot be opened fails each slot-state step with
// the reason, as the checks report it.
class DeferredEfiStore final : public EfiVarStoreInterface {
 public:
  Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) override {
    return TRY(Store())->Get(guid, name);
  }
  Result<void> Set(const EfiGuid& guid, std::string_view name, std::span<const uint8_t> data,
                   uint32_t attributes) override {
    return TRY(Store())->Set(guid, name, data, attributes);
  }
  Result<void> Delete(const EfiGuid& guid, std::string_view name) override {
    return TRY(Store())->Delete(guid, name);
  }
  Result<std::vector<std::string>> List(const EfiGuid& guid) override {
    return TRY(Store())->List(guid);
  }

 private:
  Result<EfiVarStoreInterface*> Store() {
    if (!store_) {
      auto opened = LibefivarStore::Open();
      if (!opened) return std::move(opened).error().WithContext("opening the EFI variable store");
      store_ = std::move(*opened);
    }
    return store_.get();
  }
  std::unique_ptr<LibefivarStore> store_;
};

// A healthy boot clears the boot-failure counter early boot counted up
// (boot/boot_failures.h). A failure to write it is reported: the worst it
// does is send a healthy slot to RECOVERY sooner.
void ClearBootFailures(const std::string& slot_name) {
  auto slot = boot::ParseSlot(slot_name);
  if (!slot) return;  // RECOVERY, or unknown: nothing was counted
  std::string path(boot::kBootFailuresPath);
  std::optional<boot::BootFailures> stored;
  if (auto text = ReadWholeFile(path)) {
    if (auto parsed = boot::ParseBootFailures(*text)) stored = *parsed;
  }
  std::optional<boot::BootFailures> clear = boot::OnHealthyBoot(stored, *slot);
  if (!clear) return;
  if (auto written = WriteFileAtomically(path, boot::RenderBootFailures(*clear), 0644,
                                         Durability::kFileAndDirectorySynced);
      !written) {
    LogError("boot-failure counter not cleared: {}", written.error().ToString());
  }
}

}  // namespace

int main() {
  LogInit("ralph-health", LogSink::kKmsg);
  health::HealthEnvironment env;
  DeferredEfiStore vars;
  health::ApplianceDisk disk;
  health::SystemClock clock;
  health::InitReboot reboot;
  health::RalphdProbe control_plane;
  health::GateSystem system{.vars = &vars, .disk = &disk, .kernel_cmdline = ReadCmdline()};
  env.system = &system;
  env.clock = &clock;
  env.control_plane = &control_plane;
  std::map<std::string, std::string> early_boot = EarlyBootRecord(env);
  int status =
      health::RunHealthGate(env, health::HealthChecks(), early_boot, reboot,
                            [](LogLevel level, std::string_view line) { LogLine(level, line); });
  if (status == 0) ClearBootFailures(early_boot["slot"]);
  return status;
}
