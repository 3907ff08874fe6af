// ralph-early-boot: /init in the initrd (no shell). Loads the kernel modules
// the appliance needs, finds the partitions by PARTLABEL, arms the watchdog,
// mounts the slot's root read-only through dm-verity and VAR (formatting it
// on first boot, checking it every boot), then switches root into
// ralph-init.
//
// Any failure to reach the slot's root is fatal: it is reported on the
// console and the machine reboots, so the firmware falls back to the
// committed slot when this was a trial boot (BootNext is already consumed).
#include <fcntl.h>
#include <linux/module.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "boot/boot_config.h"
#include "boot/boot_failures.h"
#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "drivers/verity.h"
#include "drivers/watchdog.h"
#include "platform/efivar_store.h"
#include "platform/file_io.h"
#include "platform/hex.h"
#include "platform/log.h"
#include "platform/process.h"
#include "platform/unique_fd.h"
#include "services/init/mounts.h"
#include "services/init/recovery_banner.h"

namespace ralph::init {

// The kernel command line and the early-boot record (boot/boot_config.h).
using boot::BootConfig;
using boot::BootMode;
using boot::BootModeName;
using boot::kEarlyBootRecordPath;
using boot::ParseKernelCmdline;
using boot::RenderRecord;
using boot::RootPartLabel;
using boot::SlotDisplayName;

namespace {

constexpr const char* kNewRoot = "/sysroot";
constexpr const char* kEfivarfs = "/sys/firmware/efi/efivars";
constexpr auto kPartitionWait = std::chrono::seconds(10);

[[noreturn]] void FatalReboot(const Error& error) {
  LogError("{}", error.ToString());
  LogError(
      "cannot boot this slot: rebooting in 5 s (the firmware falls back to the committed "
      "slot)");
  ::sync();
  std::this_thread::sleep_for(std::chrono::seconds(5));
  ::reboot(RB_AUTOBOOT);
  // reboot(2) only returns on failure; PID 1 must not exit.
  for (;;) ::pause();
}

// Loads each module listed in /etc/ralph/modules (dependencies first, as
// ralph-mkimage resolved them from modules.dep).
void LoadModules() {
  auto list = ReadWholeFile("/etc/ralph/modules");
  if (!list) {
    LogError("loading modules: {}", list.error().ToString());
    return;
  }
  std::istringstream lines(*list);
  int loaded = 0;
  for (std::string path; std::getline(lines, path);) {
    if (path.empty()) continue;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      LogError("loading module {}: {}", path, Error::FromErrno("open", errno).ToString());
      continue;
    }
    // Debian may ship compressed modules; the kernel decompresses them
    // itself when asked (finit_module(2), MODULE_INIT_COMPRESSED_FILE, 5.17+).
    unsigned int flags = 0;
    if (path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz")) {
      flags |= MODULE_INIT_COMPRESSED_FILE;
    }
    // glibc has no finit_module wrapper: raw syscall.
    if (::syscall(SYS_finit_module, fd.get(), "", flags) != 0 && errno != EEXIST) {
      LogError("loading module {}: {}", path, Error::FromErrno("finit_module", errno).ToString());
      continue;
    }
    ++loaded;
  }
  LogInfo("loaded {} kernel modules", loaded);
}

// Arms the watchdog (softdog, loaded above, when the machine has none) and
// lets it go without the magic close: it keeps running, so a hang anywhere
// from here until ralph-init pets it resets the machine.
void ArmWatchdog(int seconds) {
  if (seconds <= 0) return;
  Watchdog watchdog;
  if (auto started = watchdog.Start(std::chrono::seconds(seconds)); !started) {
    LogError("watchdog: {}: hangs will not reset the machine", started.error().ToString());
    return;
  }
  LogInfo("watchdog armed: {} s ({})", watchdog.timeout().count(), watchdog.identity());
}

// The appliance disk as libblkid sees it, once the partition holding this
// slot's root shows up (virtio_blk probes asynchronously).
Result<DiskLayout> WaitForDisk(const std::string& root_label) {
  auto deadline = std::chrono::steady_clock::now() + kPartitionWait;
  for (;;) {
    auto disks = FindDisksByPartLabel(root_label);
    if (disks && !disks->empty()) {
      if (disks->size() > 1) {
        return Error::Make(ErrorCode::kAlreadyExists,
                           fmt::format("several disks hold a partition labelled {}: {}", root_label,
                                       fmt::join(*disks, ", ")));
      }
      return ProbeDisk(disks->front());
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      if (!disks) return std::move(disks).error().WithContext("looking for the disk");
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("no disk has a partition labelled {} after {} s (missing or "
                                     "mis-labelled)",
                                     root_label, kPartitionWait.count()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// The EFI variable store and the slot manager over it; either may be
// missing (`problem` says why), and the boot goes on without them.
struct SlotManagerAccess {
  std::unique_ptr<LibefivarStore> store;
  std::optional<boot::SlotManager> manager;
  std::string problem;
};

SlotManagerAccess OpenSlotManager(const std::string& cmdline, const DiskLayout& disk) {
  SlotManagerAccess access;
  auto store = LibefivarStore::Open();
  if (!store) {
    access.problem = "opening the EFI variable store: " + store.error().ToString();
    LogError("slot manager: {}", access.problem);
    return access;
  }
  access.store = std::move(*store);
  auto created = boot::SlotManager::Create(*access.store, disk, cmdline);
  if (!created) {
    access.problem = created.error().ToString();
    LogError("slot manager: {}", access.problem);
    return access;
  }
  access.manager.emplace(std::move(*created));
  return access;
}

// Which image booted, so which root to mount (boot::DetectBooted: the kernel
// command line's ralph.slot= for RECOVERY, else the stub's
// LoaderImageIdentifier or BootCurrent; a slot's UKI names no slot). Read
// before anything is written. Without readable EFI variables nothing tells
// the slots apart: the removable path's owner over an empty view (slot A,
// the factory slot), said loudly.
boot::BootedDetection DetectBootedImage(const SlotManagerAccess& access,
                                        const std::string& cmdline) {
  std::string problem = access.problem;
  if (access.store) {
    auto raw = boot::ReadRawVariables(*access.store);
    if (raw) {
      std::optional<HardDriveNode> esp;
      if (access.manager) esp = access.manager->esp();
      boot::BootedDetection booted =
          boot::DetectBooted(boot::DecodeFirmwareView(*raw, esp), cmdline, esp);
      if (booted.target) return booted;
      problem = booted.how;
    } else {
      problem = raw.error().ToString();
    }
  }
  boot::BootedDetection booted = boot::DetectBooted(boot::FirmwareView{}, cmdline);
  if (booted.target) return booted;
  boot::RemovablePathOwner owner = boot::RemovablePathSlot(boot::FirmwareView{});
  LogError("cannot tell which slot booted ({}): booting {}", problem, owner.how);
  return {boot::TargetOf(owner.slot), fmt::format("{}; {}", problem, owner.how)};
}

// The slot manager's part of every boot, run here rather than in PID 1 so
// that a trial slot whose userspace hangs (the watchdog resets it) still has
// its tries counted and BootNext re-armed (SlotManager::OnBoot; it also
// repairs Boot#### entries and BootOrder, which provisions a fresh machine).
// On a RECOVERY boot OnBoot changes no slot state; the banner then shows
// the state as it is. Failures are reported and the boot goes on: the
// health gate then refuses to commit.
std::optional<boot::SlotState> RunSlotManager(SlotManagerAccess& access, BootMode mode) {
  std::string problem = access.problem;  // why the banner cannot show the state
  std::optional<boot::SlotManager>& manager = access.manager;
  std::optional<boot::SlotState> after;
  if (manager) {
    auto report = manager->OnBoot();
    if (!report) {
      LogError("slot manager: {}", report.error().ToString());
    } else {
      after = report->record;
      for (const auto& finding : report->findings) LogInfo("slot manager: {}", finding);
      if (report->rolled_back) {
        LogError("slot {} failed its trial: rolled back", boot::SlotName(*report->rolled_back));
      }
      LogInfo("slot manager: boot event {}{}", boot::BootEventName(report->event),
              report->written.empty()
                  ? std::string()
                  : fmt::format(", wrote {}", fmt::join(report->written, ", ")));
    }
  }
  if (mode != BootMode::kRecovery) return after;
  std::optional<boot::SlotState> record;
  if (manager) {
    auto status = manager->Status();
    if (!status) {
      problem = status.error().ToString();
    } else if (status->view.record) {
      record = *status->view.record;
    } else {
      problem = status->view.record_error ? status->view.record_error->message()
                                          : std::string("RalphSlotState is missing");
    }
  }
  for (const auto& line : RecoveryBanner(record, problem)) LogWarning("{}", line);
  return after;
}

// The boot-failure counter on VAR (boot/boot_failures.h), counted here, on
// every boot of the committed slot, before anything past early boot can
// hang or crash; the health gate clears it. When it trips, BootNext =
// RECOVERY, and a note on VAR tells ralph-recovery why it was entered.
void CountBoot(SlotManagerAccess& access, const std::optional<boot::SlotState>& record,
               const std::string& slot, bool var_usable) {
  auto booted = boot::ParseSlot(slot);
  if (!booted) return;
  std::string path = std::string(kNewRoot) + std::string(boot::kBootFailuresPath);
  boot::CounterState state = boot::CounterState::kVarUnusable;
  std::optional<boot::BootFailures> stored;
  if (var_usable) {
    auto text = ReadWholeFile(path);
    if (!text) {
      state = text.error().code() == ErrorCode::kNotFound ? boot::CounterState::kMissing
                                                          : boot::CounterState::kCorrupt;
      if (state == boot::CounterState::kCorrupt) {
        LogError("boot-failure counter: {}: counting from 0", text.error().ToString());
      }
    } else if (auto parsed = boot::ParseBootFailures(*text)) {
      state = boot::CounterState::kRead;
      stored = *parsed;
    } else {
      state = boot::CounterState::kCorrupt;
      LogError("boot-failure counter {}: {}: counting from 0", path, parsed.error().ToString());
    }
  }
  boot::BootStart start =
      boot::OnBootStart(state, stored, *booted, record ? record->committed : std::nullopt,
                        boot::kDefaultBootFailureLimit);
  if (start.write) {
    std::string dir = path.substr(0, path.rfind('/'));
    if (::mkdir((std::string(kNewRoot) + "/var/lib").c_str(), 0755) != 0 && errno != EEXIST) {
      LogError("{}", Error::FromErrno("mkdir /var/lib", errno).ToString());
    }
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      LogError("{}", Error::FromErrno(fmt::format("mkdir {}", dir), errno).ToString());
    }
    // Synced: a boot that dies right after must still have been counted.
    if (auto written = WriteFileAtomically(path, boot::RenderBootFailures(*start.write), 0644,
                                           Durability::kFileAndDirectorySynced);
        !written) {
      LogError("boot-failure counter not kept: {}", written.error().ToString());
    }
  }
  if (!start.arm_recovery) {
    if (start.write) LogInfo("boot-failure counter: {}", start.why);
    return;
  }
  LogError("RECOVERY entry: {}", start.why);
  if (var_usable) {
    std::string note = std::string(kNewRoot) + std::string(boot::kRecoveryArmedPath);
    if (auto written =
            WriteFileAtomically(note, start.why + "\n", 0644, Durability::kFileAndDirectorySynced);
        !written) {
      LogError("RECOVERY entry not noted on VAR: {}", written.error().ToString());
    }
  }
  if (!access.manager) {
    LogError("cannot arm RECOVERY: {}", access.problem);
    return;
  }
  auto armed = access.manager->ArmRecovery();
  if (!armed) {
    LogError("arming RECOVERY: {}", armed.error().ToString());
    return;
  }
  LogError("RECOVERY armed (BootNext): the next reset boots it");
}

// Runs a tool from the initrd with the console as its output; returns its
// exit status.
Result<int> RunConsoleTool(const std::vector<std::string>& argv) {
  ProgramExit run = TRY(RunProgram({.argv = argv, .output = ProgramOutput::kInherit}));
  if (run.signal != 0) {
    return Error::Make(ErrorCode::kIo, fmt::format("{} {}", argv[0], run.Describe()));
  }
  return run.exit_status;
}

Result<void> FormatVar(const std::string& device) {
  int status = TRY(RunConsoleTool({"/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-L", "VAR", "-E",
                                   "lazy_itable_init=1,lazy_journal_init=1", device}));
  if (status != 0) {
    return Error::Make(ErrorCode::kIo,
                       fmt::format("mke2fs {} failed with exit status {}", device, status));
  }
  return {};
}

// Makes VAR mountable and says what was done: "formatted" on first boot,
// "clean", "repaired", or "re-created" when it was beyond repair.
Result<std::string> PrepareVar(const std::string& device) {
  std::vector<uint8_t> head(4096);
  {
    UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return Error::FromErrno(fmt::format("open {}", device), errno);
    if (::pread(fd.get(), head.data(), head.size(), 0) != static_cast<ssize_t>(head.size())) {
      return Error::FromErrno(fmt::format("read {}", device), errno);
    }
  }
  switch (ClassifyVarHead(head)) {
    case VarContent::kBlank:
      LogInfo("VAR ({}) is blank: first boot, creating the ext4 filesystem", device);
      TRY_CTX(FormatVar(device), "formatting VAR");
      return std::string("formatted");
    case VarContent::kUnknown:
      LogError(
          "VAR ({}) holds no ext4 filesystem (corrupt superblock or foreign data): "
          "re-creating it; its previous contents are lost",
          device);
      TRY_CTX(FormatVar(device), "re-creating VAR");
      return std::string("re-created");
    case VarContent::kExt4: break;
  }
  // -p repairs what is safe without questions; it is quick on a clean
  // filesystem and does the full check after an unclean shutdown.
  int status = TRY(RunConsoleTool({"/sbin/e2fsck", "-p", device}));
  FsckOutcome outcome = InterpretFsckStatus(status);
  if (outcome == FsckOutcome::kClean) return std::string("clean");
  if (outcome == FsckOutcome::kRepaired) {
    LogWarning("VAR ({}): filesystem errors were corrected (e2fsck exit status {})", device,
               status);
    return std::string("repaired");
  }
  LogError("VAR ({}): filesystem check failed (e2fsck -p exit status {}): trying e2fsck -y", device,
           status);
  status = TRY(RunConsoleTool({"/sbin/e2fsck", "-y", device}));
  if (InterpretFsckStatus(status) != FsckOutcome::kFailed) return std::string("repaired");
  LogError(
      "VAR ({}): filesystem is corrupt beyond repair (e2fsck -y exit status {}): "
      "re-creating it; its previous contents are lost",
      device, status);
  TRY_CTX(FormatVar(device), "re-creating VAR");
  return std::string("re-created");
}

// The name of the verified root's device-mapper device.
constexpr const char* kVerifiedRootName = "ralph-root";

// Maps the root partition through dm-verity with the parameters on the
// kernel command line (inside the UKI, drivers/verity.h) and returns the
// verified device. Nothing is ever mounted from the partition itself: a
// command line without the parameters, or with broken ones, fails the boot.
Result<std::string> OpenVerifiedRoot(std::string_view slot, const std::string& label,
                                     const std::string& device, const std::string& cmdline) {
  auto parsed = ParseVerityCmdline(cmdline);
  if (!parsed) {
    return std::move(parsed).error().WithContext(fmt::format(
        "slot {}: refusing to mount {} ({}) unverified", SlotDisplayName(slot), label, device));
  }
  if (!*parsed) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("slot {}: the kernel command line has no ralph.verity.* "
                                   "parameters: refusing to mount {} ({}) unverified",
                                   SlotDisplayName(slot), label, device));
  }
  const VerityParams& params = **parsed;
  std::string verified = TRY_CTX(OpenVerityDevice(kVerifiedRootName, device, params),
                                 fmt::format("slot {} root {}", SlotDisplayName(slot), label));
  LogInfo("slot {} root {} ({}) verified by dm-verity as {}: {} blocks, root hash {}",
          SlotDisplayName(slot), label, device, verified, params.data_blocks,
          HexEncode(params.root_hash));
  return verified;
}

// Mounts the verified device `verified` (of the partition `device`): every
// block read from it, the squashfs magic included, is checked against the
// hash tree, and one that does not match is an I/O error here or later.
Result<void> MountRoot(std::string_view slot, const std::string& label, const std::string& device,
                       const std::string& verified) {
  std::vector<uint8_t> head(4);
  UniqueFd fd(::open(verified.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", verified), errno);
  if (::pread(fd.get(), head.data(), head.size(), 0) != 4) {
    return Error::FromErrno(
        fmt::format("slot {} root {} ({}): reading {} (a dm-verity error is a block that does "
                    "not match the root hash on the command line)",
                    SlotDisplayName(slot), label, device, verified),
        errno);
  }
  if (!(head[0] == 'h' && head[1] == 's' && head[2] == 'q' && head[3] == 's')) {
    return Error::Make(
        ErrorCode::kCorrupt,
        fmt::format("slot {} root {} ({}) is not a squashfs filesystem (magic "
                    "{:02x}{:02x}{:02x}{:02x})",
                    SlotDisplayName(slot), label, device, head[0], head[1], head[2], head[3]));
  }
  if (::mount(verified.c_str(), kNewRoot, "squashfs", MS_RDONLY | MS_NODEV, nullptr) != 0) {
    return Error::FromErrno(fmt::format("mounting slot {} root {} ({} as {}) read-only",
                                        SlotDisplayName(slot), label, device, verified),
                            errno);
  }
  return {};
}

Result<void> SwitchRoot(const std::string& init) {
  for (const char* dir : {"/dev", "/proc", "/sys", "/run"}) {
    std::string target = std::string(kNewRoot) + dir;
    if (::mount(dir, target.c_str(), nullptr, MS_MOVE, nullptr) != 0) {
      return Error::FromErrno(fmt::format("moving {} to {}", dir, target), errno);
    }
  }
  // The initramfs stays in memory (a few MiB): it cannot be unmounted, and
  // freeing its files is an optimisation left for later.
  if (::chdir(kNewRoot) != 0) return Error::FromErrno("chdir /sysroot", errno);
  if (::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) {
    return Error::FromErrno("moving /sysroot to /", errno);
  }
  if (::chroot(".") != 0) return Error::FromErrno("chroot", errno);
  if (::chdir("/") != 0) return Error::FromErrno("chdir /", errno);
  std::string arg0 = init;
  char* argv[] = {arg0.data(), nullptr};
  ::execv(init.c_str(), argv);
  return Error::FromErrno(fmt::format("exec {}", init), errno);
}

// libefivar picks its backend once, in a constructor that runs when the
// library is loaded (efivar 37 lib.c libefivar_init): loaded before
// efivarfs was mounted it never sees the store. So the first stage mounts
// efivarfs and re-executes /init; the second stage's libefivar finds it.
constexpr const char* kSecondStage = "--efivarfs-mounted";

Result<void> MountEfivarfsAndReexec() {
  if (::mount("efivarfs", kEfivarfs, "efivarfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0 &&
      errno != EBUSY) {
    LogError("{}: the slot state cannot be updated on this boot",
             Error::FromErrno(fmt::format("mounting efivarfs on {}", kEfivarfs), errno).ToString());
  }
  char arg0[] = "/init";
  std::string arg1 = kSecondStage;
  char* argv[] = {arg0, arg1.data(), nullptr};
  ::execv("/init", argv);
  return Error::FromErrno("re-executing /init", errno);
}

Result<void> Run(bool second_stage) {
  std::vector<Error> optional_failures;
  TRY_CTX(ApplyMounts(EarlyMounts(), &optional_failures), "early mounts");
  LogInit("ralph-early-boot", LogSink::kKmsg);
  std::string cmdline = TRY(ReadWholeFile("/proc/cmdline"));
  BootConfig config = TRY(ParseKernelCmdline(cmdline));
  if (!second_stage) {
    LogInfo("early boot: {}", config.slot ? "ralph.slot=" + *config.slot
                                          : std::string("the firmware variables tell the slot"));
    LoadModules();
    ArmWatchdog(config.watchdog_seconds);
    return MountEfivarfsAndReexec();
  }

  // Any disk of ours has SYSTEM_A; RECOVERY's command line names its root.
  std::string disk_label = config.root_partlabel.value_or(std::string(kPartSystemA));
  DiskLayout disk = TRY_CTX(WaitForDisk(disk_label), "finding the appliance disk");
  SlotManagerAccess access = OpenSlotManager(cmdline, disk);
  boot::BootedDetection booted = DetectBootedImage(access, cmdline);
  std::string slot(boot::BootTargetName(*booted.target));
  for (char& c : slot) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  BootMode mode = slot == "recovery" ? BootMode::kRecovery : BootMode::kSlot;
  LogInfo("booting slot {} ({}){}", SlotDisplayName(slot), booted.how,
          mode == BootMode::kRecovery ? ", RECOVERY mode" : "");
  if (auto complete = CheckApplianceLayout(disk); !complete) {
    LogError("disk {}: {}", disk.disk, complete.error().ToString());
  }
  std::optional<boot::SlotState> slot_record = RunSlotManager(access, mode);
  std::string label = TRY(RootPartLabel(config, slot));
  const PartitionInfo* root = disk.Find(label);
  if (root == nullptr || root->device.empty()) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("slot {}: root partition {} has no device node on {}",
                                   SlotDisplayName(slot), label, disk.disk));
  }
  std::string verified = TRY(OpenVerifiedRoot(slot, label, root->device, cmdline));
  TRY(MountRoot(slot, label, root->device, verified));

  std::map<std::string, std::string> record = {{"slot", slot},
                                               {"mode", std::string(BootModeName(mode))},
                                               {"root", root->device},
                                               {"root_verified", verified},
                                               {"booted_by", booted.how}};
  std::string var_target = std::string(kNewRoot) + "/var";
  const PartitionInfo* var = disk.Find(kPartVar);
  Result<std::string> var_state =
      var == nullptr || var->device.empty()
          ? Result<std::string>(Error::Make(ErrorCode::kNotFound, "no partition labelled VAR"))
          : PrepareVar(var->device);
  if (var_state && ::mount(var->device.c_str(), var_target.c_str(), "ext4", MS_NOSUID | MS_NODEV,
                           "errors=remount-ro") != 0) {
    var_state = Error::FromErrno(fmt::format("mounting VAR ({})", var->device), errno);
  }
  if (!var_state) {
    // The slot still boots so it can be reached and repaired; the health
    // gate refuses to commit a trial on a degraded VAR.
    LogError("VAR unavailable: {}: /var is a temporary tmpfs for this boot",
             var_state.error().ToString());
    if (::mount("tmpfs", var_target.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") != 0) {
      return Error::FromErrno("mounting a tmpfs on /var", errno);
    }
    record["var"] = "tmpfs";
  } else {
    record["var"] = *var_state;
    LogInfo("VAR {} ({}), mounted on /var", *var_state, var->device);
  }
  if (mode == BootMode::kSlot) CountBoot(access, slot_record, slot, var_state.has_value());
  if (::mkdir("/run/ralph", 0755) != 0 && errno != EEXIST) {
    return Error::FromErrno("mkdir /run/ralph", errno);
  }
  TRY(WriteWholeFile(kEarlyBootRecordPath, RenderRecord(record)));
  LogInfo("switching root to slot {}: {}", SlotDisplayName(slot), config.init);
  return SwitchRoot(config.init);
}

}  // namespace
}  // namespace ralph::init

int main(int argc, char** argv) {
  ralph::LogInit("ralph-early-boot", ralph::LogSink::kStderr);
  bool second_stage = argc > 1 && std::string_view(argv[1]) == ralph::init::kSecondStage;
  auto result = ralph::init::Run(second_stage);
  // Run() only returns on failure (success execs ralph-init).
  ralph::init::FatalReboot(
      result ? ralph::Error::Make(ralph::ErrorCode::kInternal, "early boot returned")
             : result.error());
}
