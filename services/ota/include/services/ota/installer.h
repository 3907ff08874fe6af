// The slot writer: installs a signed bundle into the inactive slot in the
// order of docs/architecture.md "Boot", so that an interruption at
// any point leaves the committed slot booting and the target never on trial
// unless it was fully written and verified:
//
//   lock (one install at a time)
//   open the source; verify the manifest signature against the keyring
//     (before any byte touches the disk); parse the manifest
//   plan: compatibility (product, arch), booted slot committed, target = the
//     other slot (never the booted one), anti-rollback, size   [PlanInstall]
//   SlotManager::BeginWrite(target)       -> target `writing`, out of BootOrder
//   stream + verify + write each chunk (adaptive)              [writer.h]
//   flush; re-read and verify the whole slot
//   the UKI, verified chunk by chunk, to \EFI\ralph\<slot>.efi; read back
//   SlotManager::FinishWrite(target)      -> `trial` + BootNext
//
// Library code (recovery/ links it): returns errors, logs nothing.
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "boot/slot_manager.h"
#include "boot/slot_state.h"
#include "drivers/disk.h"
#include "platform/result.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/progress.h"
#include "services/ota/source.h"
#include "services/ota/writer.h"

namespace ralph::audit {
class AuditSinkInterface;
}

namespace ralph::ota {

struct DeviceIdentity {
  std::string product = "ralphos";
  std::string arch;  // arch::Name() when empty
};

// Installing below the anti-rollback minimum needs an explicit override,
// which Install records in the audit log before writing anything, and
// refuses when it cannot (install_audit.h).
enum class DowngradeOverride { kRefuse, kAllow };

// What the plan is decided from (read from the slot manager and the disk).
struct InstallFacts {
  DeviceIdentity identity;
  std::optional<boot::BootTarget> booted;  // unset: cannot tell
  std::optional<boot::SlotState> record;   // unset: missing or corrupt
  uint64_t slot_a_bytes = 0;
  uint64_t slot_b_bytes = 0;
  // Only when booted from RECOVERY: which slot to (re)write.
  std::optional<boot::Slot> requested_target;
};

struct InstallPlan {
  boot::Slot target = boot::Slot::kB;
  boot::SlotVersion version;
  boot::DowngradePolicy downgrade = boot::DowngradePolicy::kRefuse;
  std::vector<std::string> notes;  // e.g. the downgrade override, for the audit log
};

// Pure. kRefused for another product/arch, a booted slot that is not
// committed, a version below the minimum without override, a running
// version below the bundle's install-from, a request to write the booted
// slot; kNoSpace when the system image does not fit the target slot;
// kInvalidState when the booted slot or the slot record is unknown.
Result<InstallPlan> PlanInstall(const Manifest& manifest, const InstallFacts& facts,
                                DowngradeOverride downgrade);

struct InstallOptions {
  std::string source;  // file path or https:// URL
  HttpsOptions https;
  std::string keyring_path;  // file or directory of PEM certificates
  std::string crl_path;      // optional
  DeviceIdentity identity;
  DowngradeOverride downgrade = DowngradeOverride::kRefuse;
  std::optional<boot::Slot> target;  // RECOVERY only
  uint8_t tries = 1;
  WriteOptions::Mode mode = WriteOptions::Mode::kAdaptive;
  std::string lock_path = "/run/ralph/ota.lock";
  std::string status_path = "/run/ralph/ota-status.json";  // empty: none
  std::string work_dir = "/run/ralph";                     // the UKI is staged here before mcopy
  ProgressTracker::Callback on_progress;
  const std::atomic<bool>* cancel = nullptr;
  // The audit log (borrowed; may be null): install events go there, and a
  // downgrade override is refused unless it is recorded there first
  // (services/ota/install_audit.h).
  audit::AuditSinkInterface* audit = nullptr;
  // Test hook: called at named points ("begin-write", "chunk", "flushed",
  // "verified", "esp-staged", "esp-written", "finish-write"); fault-injection
  // tests kill the process there.
  std::function<void(std::string_view point)> hook;
};

struct InstallReport {
  boot::Slot target = boot::Slot::kB;
  Version version;
  SignerInfo signer;
  WriteStats stats;
  double seconds = 0;
  std::vector<std::string> notes;
};

// Runs the whole install (see the top of this file). `slots` and `layout`
// are borrowed: the slot manager of the running system and the appliance
// disk it lives on. kBusy when another install holds the lock; the errors of
// PlanInstall, OpenBundle, the writer and the slot manager otherwise, with
// context ("writing slot B: rootfs chunk 17 (...): digest mismatch").
Result<InstallReport> Install(const InstallOptions& options, boot::SlotManager& slots,
                              const DiskLayout& layout);

}  // namespace ralph::ota
