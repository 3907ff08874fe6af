// The e2e harness: an appliance disk booted in QEMU (x86_64, q35, TCG) with
// OVMF and a persistent VARS file, its serial console captured to a file,
// and the test agent (test images only) reached over a virtio-serial port
// backed by a host unix socket.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::e2e {

// Where the fixtures put their files (under the build tree).
struct E2ePaths {
  std::string binary_dir;       // RALPH_BINARY_DIR
  std::string images_dir;       // <binary_dir>/e2e/images: disks built by the e2e_images fixture
  std::string provisioned_dir;  // <binary_dir>/e2e/provisioned: disk + VARS after a first boot
  std::string run_dir;          // <binary_dir>/e2e/run: per-test scratch
  static E2ePaths FromEnvironment();
};

// OVMF's Secure Boot build (SMM: the variable store is writable only from
// SMM, so the OS cannot rewrite the keys behind the firmware's back).
// Whether Secure Boot is enforced is the VARS file's choice: kOvmfVars has
// Debian's snakeoil key enrolled as PK, KEK and db (Secure Boot on; the e2e
// images are signed with its key by build_images.sh), kOvmfVarsSetupMode has no
// keys (setup mode: Secure Boot off, unsigned images boot).
inline constexpr const char* kOvmfCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
inline constexpr const char* kOvmfVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
inline constexpr const char* kOvmfVarsSetupMode = "/usr/share/OVMF/OVMF_VARS_4M.fd";
inline constexpr const char* kSnakeoilCert = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
// OVMF without SMM or Secure Boot enforcement (the benchmark's "off" peer).
inline constexpr const char* kOvmfCodeNoSecureBoot = "/usr/share/OVMF/OVMF_CODE_4M.fd";

// Copies a file keeping holes (disk images are mostly empty).
Result<void> SparseCopy(const std::string& from, const std::string& to);
// Copies the named partitions' bytes from one appliance disk image to
// another with the same GPT (the e2e way of "installing" a slot variant).
Result<void> CopyPartitions(const std::string& from_disk, const std::string& to_disk,
                            const std::vector<std::string>& labels);
// SHA-256 (hex) of a partition's whole extent in a disk image.
Result<std::string> PartitionSha256(const std::string& disk, const std::string& label);
// Copies partition `from_label` of one appliance disk image onto partition
// `to_label` of another (same size), e.g. a variant's SYSTEM_B image into a
// factory disk's SYSTEM_A.
Result<void> CopyPartitionAs(const std::string& from_disk, const std::string& from_label,
                             const std::string& to_disk, const std::string& to_label);
// A file on the ESP of a disk image ("/EFI/BOOT/BOOTX64.EFI"), read on the
// host with mtools (QEMU must not be running on the disk).
Result<std::string> ReadEspFile(const std::string& disk, const std::string& path);
// Replaces `path` on the ESP of the disk image with the host file `from`.
Result<void> WriteEspFile(const std::string& disk, const std::string& path,
                          const std::string& from);
// Inverts the byte at `offset` inside partition `label` (bit rot, or a
// write that went around the verified path) and returns its old value.
Result<uint8_t> FlipPartitionByte(const std::string& disk, const std::string& label,
                                  uint64_t offset);
// Overwrites `length` bytes at `offset` inside partition `label` with a
// fixed pattern (bad-input tests).
Result<void> ScribblePartition(const std::string& disk, const std::string& label, uint64_t offset,
                               uint64_t length);

struct MachineOptions {
  std::string disk;
  std::string vars;                // this machine's NVRAM (a copy of kOvmfVars)
  std::string console_log;         // serial console output
  std::string agent_socket;        // empty: no agent port
  bool console_to_stdout = false;  // main.sh: serial straight to the terminal
  int memory_mib = 512;
  // kOvmfCode with SMM (Secure Boot enforced when `vars` has keys); false:
  // kOvmfCodeNoSecureBoot without SMM, with a VARS of no keys (bench_boot).
  bool secure_boot_firmware = true;
  // The CPU model (QEMU's -cpu). Empty: QEMU's default, qemu64 (x86-64-v1,
  // older than any machine the appliance is sold for); "max": everything
  // TCG emulates, which the agent CLIs' native binaries need.
  std::string cpu;
  // A virtio NIC on QEMU user networking (DHCP server; the host is 10.0.2.2
  // from the guest, reaching the host's loopback). Off: no NIC at all.
  bool user_network = false;
  // Its virtual network (QEMU's `net=`), e.g. "192.0.2.0/24": the host is
  // then 192.0.2.2. Empty: QEMU's default 10.0.2.0/24.
  std::string user_network_cidr;
  // TCP ports of the guest reachable on the host's 127.0.0.1 (QEMU
  // hostfwd; needs user_network): the companion client reaches ralphd's
  // API this way.
  struct Forward {
    uint16_t host_port = 0;
    uint16_t guest_port = 0;
  };
  std::vector<Forward> forwards;
};

// A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick),
// for a host forward.
Result<uint16_t> FreeLocalPort();

class Machine {
 public:
  using Seconds = std::chrono::seconds;
  static Result<Machine> Start(MachineOptions options);
  Machine(Machine&& other) noexcept;
  Machine& operator=(Machine&&) = delete;
  ~Machine();

  // Waits until `text` appears in the console after the cursor, then moves
  // the cursor past it. kTimeout with the console's tail; kIo if QEMU exited.
  Result<void> WaitFor(std::string_view text, Seconds timeout);
  // Like WaitFor but for the first of several texts; returns its index.
  Result<size_t> WaitForAny(const std::vector<std::string>& texts, Seconds timeout);
  // The whole console so far.
  std::string Console() const;
  // Occurrences of `text` in the whole console.
  size_t Count(std::string_view text) const;

  // Runs a command through the test agent; returns {exit, output}.
  struct AgentReply {
    int exit = -1;
    std::string output;
  };
  Result<AgentReply> Agent(const std::vector<std::string>& argv, Seconds timeout);

  // Power cut: SIGKILL QEMU.
  void Kill();
  // Waits for QEMU to exit by itself (guest power-off with -no-reboot).
  Result<void> WaitExit(Seconds timeout);
  // False once QEMU has exited (reaps it).
  bool Alive() { return Reap(false); }
  // Seconds since QEMU was started (firmware start).
  double Elapsed() const;

 private:
  explicit Machine(MachineOptions options) : options_(std::move(options)) {}
  bool Reap(bool block);

  MachineOptions options_;
  pid_t pid_ = -1;
  size_t cursor_ = 0;
  std::chrono::steady_clock::time_point started_;
};

// A scratch directory for one test, removed by the destructor unless
// RALPH_E2E_KEEP=1.
class ScratchDir {
 public:
  static Result<ScratchDir> Create(const std::string& parent, const std::string& name);
  ScratchDir(ScratchDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  ~ScratchDir();
  const std::string& path() const { return path_; }

 private:
  explicit ScratchDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// The hex text of an EFI variable's data as efivarfs shows it (without the
// 4 attribute bytes), read in the guest through the agent. kNotFound when
// the variable does not exist.
Result<std::vector<uint8_t>> ReadGuestEfiVar(Machine& machine, const std::string& name_guid);
inline constexpr const char* kEfiGlobal = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

}  // namespace ralph::e2e

namespace ralph::e2e {

// Seconds from a boot's start (QEMU start, or the reboot request) to each
// console milestone: the firmware hands over to our image, the kernel runs
// /init, early boot starts, PID 1 is up, the health gate has passed.
struct BootTimeline {
  double firmware_handoff = 0;  // "BdsDxe: starting Boot...."
  double kernel_init = 0;       // "Run /init as init process"
  double early_boot = 0;        // "ralph-early-boot: booting slot"
  double pid1 = 0;              // "ralph-init: RalphOS slot ... up as PID 1"
  double committed = 0;         // "health gate passed"
};
// Follows the console from the machine's cursor; `start` is Elapsed() at
// the boot's start.
Result<BootTimeline> MeasureBoot(Machine& machine, double start, std::chrono::seconds timeout);

}  // namespace ralph::e2e
