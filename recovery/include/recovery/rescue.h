// The thin layer under ralph-recovery: reads the facts recovery/decide.h
// decides from (the slot manager's record and entries, each slot's content,
// VAR, the factory bundle) and carries out its actions with the product's
// own libraries: the slot manager (boot/), the OTA writer (services/ota),
// e2fsprogs, the audit log. Every action returns what it did in words (for
// the console) and is recorded in the audit log when VAR holds one.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "boot/boot_failures.h"
#include "boot/slot_manager.h"
#include "drivers/block_device.h"
#include "drivers/disk.h"
#include "platform/efi_vars.h"
#include "platform/result.h"
#include "recovery/decide.h"
#include "services/ota/installer.h"

namespace ralph::audit {
class AuditSinkInterface;
}

namespace ralph::recovery {

struct RescueConfig {
  std::string factory_bundle = "/usr/share/ralph/factory.rbundle";
  std::string keyring = "/etc/ralph/keyring";
  // VAR's mount point and whether early boot mounted VAR there (its record
  // says var=clean|repaired|formatted|re-created, not tmpfs), and what early
  // boot's check said.
  std::string var_mount = "/var";
  bool var_mounted = false;
  std::string var_state;  // early boot's word for VAR; empty when unknown
  std::string e2fsck = "/sbin/e2fsck";
  std::string mke2fs = "/sbin/mke2fs";
  std::string work_dir = "/run/ralph";  // the OTA writer's staging and lock
  std::string kernel_cmdline;           // /proc/cmdline
  ota::DeviceIdentity identity;
  // Borrowed, may be null (VAR not readable): where recovery's own events
  // and the OTA writer's go.
  audit::AuditSinkInterface* audit = nullptr;
  // Called before VAR is unmounted for a reset: whoever opened `audit`
  // closes it there (an open database keeps VAR busy).
  std::function<void()> release_var;
};

// Opens a slot partition for reading (BlockDevice over the partition's
// device node; injected so tests read fakes).
using SlotOpener =
    std::function<Result<std::unique_ptr<BlockDeviceInterface>>(const PartitionInfo& partition)>;

class Rescue {
 public:
  // `vars` is borrowed. kNotFound when the layout lacks a partition of ours.
  static Result<std::unique_ptr<Rescue>> Create(EfiVarStoreInterface& vars, DiskLayout layout,
                                                RescueConfig config, SlotOpener open_slot);

  Result<Diagnosis> Diagnose();
  // The actions of a Decision, in order, stopping at the first failure;
  // returns what each did.
  Result<std::vector<std::string>> Apply(const Decision& decision);

  Result<std::string> RepairEntries();
  // Writes `slot` from `bundle` (empty: the factory bundle) through the OTA
  // writer, after BundleRestorable; the slot goes on trial with BootNext.
  Result<std::string> Restore(boot::Slot slot, const std::string& bundle);
  // Recreates VAR's ext4 (label VAR), keeping nothing. VAR must not be
  // mounted (kBusy when it is and cannot be unmounted).
  Result<std::string> ResetVar();
  // Copies /var/log and the audit log (when VAR is mounted) plus the
  // diagnosis to a directory ralph-logs-<seconds since epoch> on `device`
  // (vfat or ext4), mounted under work_dir for the copy.
  Result<std::string> ExportLogs(const std::string& device);
  // Checks that the next boot starts a slot that can work: `slot` (when
  // given) must be committed or on trial. kRefused naming the problem.
  Result<std::string> CheckReboot(std::optional<boot::Slot> slot);

  // Removes early boot's note of why RECOVERY was armed
  // (boot::kRecoveryArmedPath), once the entry is recorded.
  void AcknowledgeEntry();

  // An audit event of actor "recovery" (best effort: a failure is returned
  // in words, never stops recovery).
  std::optional<std::string> Record(const std::string& type, const std::string& subject,
                                    const std::string& details);

  const RescueConfig& config() const { return config_; }

 private:
  Rescue(EfiVarStoreInterface& vars, DiskLayout layout, RescueConfig config, SlotOpener open_slot)
      : vars_(&vars),
        layout_(std::move(layout)),
        config_(std::move(config)),
        open_slot_(std::move(open_slot)) {}
  Result<boot::SlotManager> Manager();
  std::string EntryNotePath() const;
  VarFacts CheckVar();

  EfiVarStoreInterface* vars_;
  DiskLayout layout_;
  RescueConfig config_;
  SlotOpener open_slot_;
  std::optional<Diagnosis> last_;
};

}  // namespace ralph::recovery
