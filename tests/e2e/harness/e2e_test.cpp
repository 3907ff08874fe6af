#include "harness/e2e_test.h"

#include <unistd.h>

#include <fmt/format.h>

namespace ralph::e2e {
namespace {

std::string BootVarName(uint16_t number) {
  return fmt::format("Boot{:04X}-{}", number, kEfiGlobal);
}

}  // namespace

std::string LoadOptionDescription(const std::vector<uint8_t>& option) {
  std::string out;
  for (size_t i = 6; i + 1 < option.size(); i += 2) {
    uint16_t unit = static_cast<uint16_t>(option[i] | (option[i + 1] << 8));
    if (unit == 0) break;
    out += unit < 0x80 ? static_cast<char>(unit) : '?';
  }
  return out;
}

void E2eTest::SetUp() {
  paths_ = E2ePaths::FromEnvironment();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto scratch = ScratchDir::Create(paths_.run_dir,
                                    fmt::format("{}.{}", info->test_suite_name(), info->name()));
  ASSERT_TRUE(scratch) << scratch.error().ToString();
  scratch_.emplace(std::move(*scratch));
  disk_ = scratch_->path() + "/disk.img";
  vars_ = scratch_->path() + "/vars.fd";
}

void E2eTest::Prepare(DiskSource source) {
  if (source == DiskSource::kFresh) return PrepareImage("base");
  CopyDiskAndVars(paths_.provisioned_dir + "/disk.img", paths_.provisioned_dir + "/vars.fd");
}

void E2eTest::PrepareImage(const std::string& name) {
  CopyDiskAndVars(Image(name), kOvmfVars);
}

void E2eTest::CopyDiskAndVars(const std::string& disk, const std::string& vars) {
  ASSERT_EQ(::access(disk.c_str(), R_OK), 0)
      << disk << " is missing: the e2e fixtures (e2e_images, e2e_first_boot, e2e_agents_image) "
      << "build it";
  auto copied = SparseCopy(disk, disk_);
  ASSERT_TRUE(copied) << copied.error().ToString();
  copied = SparseCopy(vars, vars_);
  ASSERT_TRUE(copied) << copied.error().ToString();
}

void E2eTest::InstallSlotB(const std::string& variant_image) {
  auto copied = CopyPartitions(variant_image, disk_, {"EFI", "SYSTEM_B"});
  ASSERT_TRUE(copied) << copied.error().ToString();
  auto digest = PartitionSha256(disk_, "SYSTEM_B");
  ASSERT_TRUE(digest) << digest.error().ToString();
  slot_b_digest_ = *digest;
}

void E2eTest::ActivateInstalledB(Machine& machine, int tries) {
  ASSERT_FALSE(slot_b_digest_.empty()) << "InstallSlotB first";
  auto begin = Ralphctl(machine, {"boot", "begin-write", "B", "--version", "0.2.0"});
  ASSERT_EQ(begin.exit, 0) << begin.output;
  auto finish = Ralphctl(
      machine, {"boot", "finish-write", "B", "--version", "0.2.0", "--digest", slot_b_digest_});
  ASSERT_EQ(finish.exit, 0) << finish.output;
  auto active = Ralphctl(machine, {"boot", "mark-active", "B", "--tries", std::to_string(tries)});
  ASSERT_EQ(active.exit, 0) << active.output;
}

Machine E2eTest::Boot() {
  ++boots_;
  MachineOptions options;
  options.disk = disk_;
  options.vars = vars_;
  options.console_log = fmt::format("{}/console-{}.log", scratch_->path(), boots_);
  options.user_network = network_;
  options.user_network_cidr = network_cidr_;
  options.forwards = forwards_;
  if (memory_mib_ > 0) options.memory_mib = memory_mib_;
  options.cpu = cpu_;
  // Unix socket paths are short (108 bytes): keep them in /tmp.
  options.agent_socket = fmt::format("/tmp/ralph-e2e-{}-{}.sock", ::getpid(), boots_);
  auto machine = Machine::Start(options);
  if (!machine) {
    ADD_FAILURE() << machine.error().ToString();
    std::abort();  // no exceptions: a test that cannot start QEMU cannot go on
  }
  return std::move(*machine);
}

Machine::AgentReply E2eTest::Ralphctl(Machine& machine, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ralphctl"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto reply = machine.Agent(argv, kAgentTimeout);
  if (!reply) {
    ADD_FAILURE() << "ralphctl " << fmt::format("{}", fmt::join(args, " ")) << ": "
                  << reply.error().ToString();
    return {};
  }
  return *reply;
}

void E2eTest::RebootInto(Machine& machine, std::string_view slot) {
  auto reply = machine.Agent({"reboot"}, kAgentTimeout);
  ASSERT_TRUE(reply) << reply.error().ToString();
  auto booted = machine.WaitFor(BootingSlot(slot), kBootTimeout);
  ASSERT_TRUE(booted) << booted.error().ToString();
}

std::string E2eTest::BootCurrentDescription(Machine& machine) {
  auto current = ReadGuestEfiVar(machine, fmt::format("BootCurrent-{}", kEfiGlobal));
  if (!current || current->size() != 2) {
    ADD_FAILURE() << "BootCurrent: " << (current ? "bad size" : current.error().ToString());
    return "";
  }
  uint16_t number = static_cast<uint16_t>((*current)[0] | ((*current)[1] << 8));
  auto option = ReadGuestEfiVar(machine, BootVarName(number));
  if (!option) {
    ADD_FAILURE() << option.error().ToString();
    return "";
  }
  return LoadOptionDescription(*option);
}

std::string E2eTest::FirstInBootOrderDescription(Machine& machine) {
  auto order = ReadGuestEfiVar(machine, fmt::format("BootOrder-{}", kEfiGlobal));
  if (!order || order->size() < 2) {
    ADD_FAILURE() << "BootOrder: " << (order ? "empty" : order.error().ToString());
    return "";
  }
  uint16_t number = static_cast<uint16_t>((*order)[0] | ((*order)[1] << 8));
  auto option = ReadGuestEfiVar(machine, BootVarName(number));
  if (!option) {
    ADD_FAILURE() << option.error().ToString();
    return "";
  }
  return LoadOptionDescription(*option);
}

void E2eTest::PowerOff(Machine& machine) {
  auto reply = machine.Agent({"poweroff"}, kAgentTimeout);
  ASSERT_TRUE(reply) << reply.error().ToString();
  auto exited = machine.WaitExit(std::chrono::seconds(60));
  ASSERT_TRUE(exited) << exited.error().ToString();
}

}  // namespace ralph::e2e
