#include "sandbox/vm/vm_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace ralph::sandbox::vm {
namespace {

using ::testing::HasSubstr;

VmSpec BaseSpec() {
  VmSpec spec;
  spec.memory_bytes = 512ull << 20;
  spec.cpus = 2;
  spec.kernel = "/images/vmlinuz";
  spec.initrd = "/images/initrd.img";
  spec.kernel_args = "ralph.control=serial";
  spec.disks = {{"/images/base.squashfs", DiskAccess::kReadOnly},
                {"/jobs/1/upper.img", DiskAccess::kReadWrite}};
  spec.control.transport = ControlTransport::kVirtioSerial;
  spec.control.socket_path = "/run/vm/1/control.sock";
  spec.console_log = "/run/vm/1/console.log";
  return spec;
}

// The value following `option` (the n-th occurrence).
std::vector<std::string> Values(const std::vector<std::string>& argv, const std::string& option) {
  std::vector<std::string> out;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == option) out.push_back(argv[i + 1]);
  }
  return out;
}

// TCG's TSC is the host's: the guest is told the host's rate (and the
// delay loop's, at HZ=250), so its clock runs at the host's.
TEST(QemuCommandLine, TcgTellsTheGuestTheHostsTscRate) {
  VmSpec spec = BaseSpec();
  spec.tsc_khz = 2100000;
  auto argv = QemuCommandLine(spec);
  ASSERT_TRUE(argv) << argv.error().ToString();
  EXPECT_EQ(Values(*argv, "-append"),
            std::vector<std::string>{"console=ttyS0 panic=-1 quiet tsc_early_khz=2100000 "
                                     "lpj=8400000 no_timer_check ralph.control=serial"});
  // The host's rate, measured: some GHz on any x86_64 host this runs on.
  EXPECT_GT(HostTscKhz(), 100000u);
  EXPECT_LT(HostTscKhz(), 10000000u);
}

TEST(QemuCommandLine, MicrovmWithTcg) {
  auto argv = QemuCommandLine(BaseSpec());
  ASSERT_TRUE(argv) << argv.error().ToString();
  EXPECT_EQ((*argv)[0], "qemu-system-x86_64");
  EXPECT_EQ(Values(*argv, "-machine"),
            std::vector<std::string>{"microvm,x-option-roms=off,isa-serial=on"});
  EXPECT_EQ(Values(*argv, "-accel"), std::vector<std::string>{"tcg,tb-size=64"});
  EXPECT_EQ(Values(*argv, "-cpu"), std::vector<std::string>{"max"});
  EXPECT_EQ(Values(*argv, "-m"), std::vector<std::string>{"512M"});
  EXPECT_EQ(Values(*argv, "-smp"), std::vector<std::string>{"2"});
  EXPECT_EQ(Values(*argv, "-kernel"), std::vector<std::string>{"/images/vmlinuz"});
  EXPECT_EQ(Values(*argv, "-initrd"), std::vector<std::string>{"/images/initrd.img"});
  EXPECT_EQ(Values(*argv, "-append"),
            std::vector<std::string>{"console=ttyS0 panic=-1 quiet tsc_early_khz=1000000 "
                                     "lpj=4000000 no_timer_check ralph.control=serial"});
  EXPECT_EQ(Values(*argv, "-sandbox"),
            std::vector<std::string>{
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"});
  for (const char* flag : {"-nodefaults", "-no-user-config", "-no-reboot", "-nographic"}) {
    EXPECT_NE(std::find(argv->begin(), argv->end(), flag), argv->end()) << flag;
  }
  EXPECT_EQ(Values(*argv, "-monitor"), std::vector<std::string>{"none"});
  EXPECT_THAT(Values(*argv, "-drive"),
              ::testing::ElementsAre(
                  "id=disk0,file=/images/base.squashfs,format=raw,if=none,cache=none,aio=threads,"
                  "readonly=on",
                  "id=disk1,file=/jobs/1/upper.img,format=raw,if=none,cache=none,aio=threads"));
  EXPECT_THAT(
      Values(*argv, "-device"),
      ::testing::ElementsAre("virtio-blk-device,drive=disk0", "virtio-blk-device,drive=disk1",
                             "virtio-serial-device,max_ports=2",
                             "virtserialport,chardev=control,name=ralph.control"));
  EXPECT_THAT(Values(*argv, "-chardev"),
              ::testing::ElementsAre("file,id=console,path=/run/vm/1/console.log",
                                     "socket,id=control,path=/run/vm/1/control.sock"));
  EXPECT_EQ(Values(*argv, "-serial"), std::vector<std::string>{"chardev:console"});
  // No network device and no user-mode network: a VM's only way out is
  // what the host gives it.
  for (const auto& arg : *argv) {
    EXPECT_THAT(arg, ::testing::Not(HasSubstr("netdev")));
  }
}

TEST(QemuCommandLine, KvmPassesTheHostCpu) {
  VmSpec spec = BaseSpec();
  spec.accel = Accel::kKvm;
  auto argv = QemuCommandLine(spec);
  ASSERT_TRUE(argv);
  EXPECT_EQ(
      Values(*argv, "-machine"),
      std::vector<std::string>{"microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on"});
  EXPECT_EQ(Values(*argv, "-accel"), std::vector<std::string>{"kvm"});
  EXPECT_EQ(Values(*argv, "-append"),
            std::vector<std::string>{"console=ttyS0 panic=-1 quiet ralph.control=serial"});
  EXPECT_EQ(Values(*argv, "-cpu"), std::vector<std::string>{"host"});
}

TEST(QemuCommandLine, VsockControlAndNoConsole) {
  VmSpec spec = BaseSpec();
  spec.control = {ControlTransport::kVsock, 7, ""};
  spec.console_log.clear();
  spec.kernel_args.clear();
  auto argv = QemuCommandLine(spec);
  ASSERT_TRUE(argv);
  EXPECT_THAT(Values(*argv, "-device"), ::testing::Contains("vhost-vsock-device,guest-cid=7"));
  EXPECT_THAT(Values(*argv, "-chardev"), ::testing::ElementsAre("null,id=console"));
  EXPECT_EQ(Values(*argv, "-append"),
            std::vector<std::string>{
                "console=ttyS0 panic=-1 quiet tsc_early_khz=1000000 lpj=4000000 no_timer_check"});
}

TEST(ValidateVmSpec, RefusesWhatWouldBecomeAnotherOption) {
  struct Case {
    void (*mutate)(VmSpec&);
    const char* field;
  };
  const Case cases[] = {
      {[](VmSpec& s) { s.memory_bytes = 32ull << 20; }, "memory_bytes"},
      {[](VmSpec& s) { s.memory_bytes = (256ull << 20) + 1; }, "memory_bytes"},
      {[](VmSpec& s) { s.cpus = 0; }, "cpus"},
      {[](VmSpec& s) { s.cpus = 65; }, "cpus"},
      {[](VmSpec& s) { s.kernel = "vmlinuz"; }, "kernel"},
      {[](VmSpec& s) { s.initrd = ""; }, "initrd"},
      {[](VmSpec& s) { s.disks[0].path = "/a,readonly=off"; }, "disks[0].path"},
      {[](VmSpec& s) { s.disks[1].path = "/a\nb"; }, "disks[1].path"},
      {[](VmSpec& s) { s.kernel_args = "a\"b"; }, "kernel_args"},
      {[](VmSpec& s) { s.control.socket_path = "/" + std::string(120, 'x'); },
       "control.socket_path"},
      {[](VmSpec& s) {
         s.control = {ControlTransport::kVsock, 2, ""};
       },
       "control.guest_cid"},
      {[](VmSpec& s) { s.console_log = "relative.log"; }, "console_log"},
      {[](VmSpec& s) {
         s.disks.resize(9, VmDisk{"/d", DiskAccess::kReadOnly});
       },
       "disks"},
  };
  for (const auto& c : cases) {
    VmSpec spec = BaseSpec();
    c.mutate(spec);
    auto valid = ValidateVmSpec(spec);
    ASSERT_FALSE(valid) << c.field;
    EXPECT_EQ(valid.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(valid.error().ToString(), HasSubstr(std::string(c.field) + ":"));
    EXPECT_FALSE(QemuCommandLine(spec)) << c.field;
  }
}

}  // namespace
}  // namespace ralph::sandbox::vm
