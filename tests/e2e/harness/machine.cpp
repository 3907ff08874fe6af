#include "harness/machine.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "drivers/disk.h"
#include "platform/file_io.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"
#include "tests/support/loop_device.h"

namespace ralph::e2e {
namespace {

std::string Tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t i = 0; i <= lines && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

Result<void> WriteAt(int fd, const char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("pwrite", errno);
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

}  // namespace

E2ePaths E2ePaths::FromEnvironment() {
  const char* dir = std::getenv("RALPH_BINARY_DIR");
  E2ePaths paths;
  paths.binary_dir = dir ? dir : ".";
  paths.images_dir = paths.binary_dir + "/e2e/images";
  paths.provisioned_dir = paths.binary_dir + "/e2e/provisioned";
  paths.run_dir = paths.binary_dir + "/e2e/run";
  return paths;
}

Result<void> SparseCopy(const std::string& from, const std::string& to) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Error::FromErrno(fmt::format("open {}", from), errno);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return Error::FromErrno(fmt::format("stat {}", from), errno);
  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!out) return Error::FromErrno(fmt::format("create {}", to), errno);
  if (::ftruncate(out.get(), st.st_size) != 0) {
    return Error::FromErrno(fmt::format("size {}", to), errno);
  }
  std::vector<char> buffer(1 << 20);
  off_t offset = 0;
  while (offset < st.st_size) {
    off_t data = ::lseek(in.get(), offset, SEEK_DATA);
    if (data < 0) break;  // ENXIO: only a hole remains
    off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
    if (hole < 0) hole = st.st_size;
    for (off_t at = data; at < hole;) {
      size_t want =
          static_cast<size_t>(std::min<off_t>(hole - at, static_cast<off_t>(buffer.size())));
      ssize_t n = ::pread(in.get(), buffer.data(), want, at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Error::FromErrno(fmt::format("read {}", from), n < 0 ? errno : EIO);
      TRY(WriteAt(out.get(), buffer.data(), static_cast<size_t>(n), static_cast<uint64_t>(at)));
      at += n;
    }
    offset = hole;
  }
  return {};
}

Result<void> CopyPartitions(const std::string& from_disk, const std::string& to_disk,
                            const std::vector<std::string>& labels) {
  for (const auto& label : labels) TRY(CopyPartitionAs(from_disk, label, to_disk, label));
  return {};
}

Result<std::string> PartitionSha256(const std::string& disk, const std::string& label) {
  DiskLayout layout = TRY(ProbeDisk(disk));
  const PartitionInfo* partition = layout.Find(label);
  if (!partition) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("{} has no partition {}", disk, label));
  }
  UniqueFd in(::open(disk.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Error::FromErrno(fmt::format("open {}", disk), errno);
  Sha256 hasher = TRY(Sha256::Create());
  std::vector<uint8_t> buffer(1 << 20);
  for (uint64_t done = 0; done < partition->size_bytes();) {
    size_t want =
        static_cast<size_t>(std::min<uint64_t>(buffer.size(), partition->size_bytes() - done));
    ssize_t n = ::pread(in.get(), buffer.data(), want,
                        static_cast<off_t>(partition->offset_bytes() + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::FromErrno(fmt::format("read {}", disk), n < 0 ? errno : EIO);
    TRY(hasher.Update(std::span<const uint8_t>(buffer.data(), static_cast<size_t>(n))));
    done += static_cast<uint64_t>(n);
  }
  return DigestToHex(TRY(hasher.Finish()));
}

Result<void> ScribblePartition(const std::string& disk, const std::string& label, uint64_t offset,
                               uint64_t length) {
  DiskLayout layout = TRY(ProbeDisk(disk));
  const PartitionInfo* partition = layout.Find(label);
  if (!partition) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("{} has no partition {}", disk, label));
  }
  UniqueFd out(::open(disk.c_str(), O_WRONLY | O_CLOEXEC));
  if (!out) return Error::FromErrno(fmt::format("open {}", disk), errno);
  std::string pattern(length, '\0');
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(0xA5 ^ (i * 7));
  TRY(WriteAt(out.get(), pattern.data(), pattern.size(), partition->offset_bytes() + offset));
  if (::fsync(out.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", disk), errno);
  return {};
}

Result<uint8_t> FlipPartitionByte(const std::string& disk, const std::string& label,
                                  uint64_t offset) {
  DiskLayout layout = TRY(ProbeDisk(disk));
  const PartitionInfo* partition = layout.Find(label);
  if (!partition) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("{} has no partition {}", disk, label));
  }
  if (offset >= partition->size_bytes()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("offset {} is past partition {}", offset, label));
  }
  UniqueFd fd(::open(disk.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", disk), errno);
  uint8_t byte = 0;
  off_t at = static_cast<off_t>(partition->offset_bytes() + offset);
  if (::pread(fd.get(), &byte, 1, at) != 1)
    return Error::FromErrno(fmt::format("read {}", disk), errno);
  uint8_t flipped = static_cast<uint8_t>(~byte);
  TRY(WriteAt(fd.get(), reinterpret_cast<const char*>(&flipped), 1,
              partition->offset_bytes() + offset));
  if (::fsync(fd.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", disk), errno);
  return byte;
}

Result<Machine> Machine::Start(MachineOptions options) {
  for (const char* tool : {"/usr/bin/qemu-system-x86_64", kOvmfCode, kOvmfVars}) {
    if (::access(tool, R_OK) != 0) {
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("{} is missing (Debian packages qemu-system-x86 and ovmf; run "
                                     "scripts/setup.sh)",
                                     tool));
    }
  }
  Machine machine(std::move(options));
  const MachineOptions& o = machine.options_;
  if (!o.forwards.empty() && !o.user_network) {
    return Error::Make(ErrorCode::kInvalidArgument, "host forwards need the user network");
  }
  std::string nic = "none";
  if (o.user_network) {
    nic = "user,model=virtio-net-pci";
    if (!o.user_network_cidr.empty()) nic += ",net=" + o.user_network_cidr;
    for (const auto& forward : o.forwards) {
      nic += fmt::format(",hostfwd=tcp:127.0.0.1:{}-:{}", forward.host_port, forward.guest_port);
    }
  }
  // The Secure Boot firmware keeps its variable store in SMM and stops
  // without it; the flash is then writable only from SMM.
  std::string code = o.secure_boot_firmware ? kOvmfCode : kOvmfCodeNoSecureBoot;
  std::vector<std::string> argv = {
      "qemu-system-x86_64",
      "-machine",
      o.secure_boot_firmware ? "q35,smm=on" : "q35",
      "-m",
      std::to_string(o.memory_mib),
      "-smp",
      "1",
      "-display",
      "none",
      "-monitor",
      "none",
      "-nic",
      nic,
      "-no-user-config",
      "-drive",
      fmt::format("if=pflash,format=raw,readonly=on,file={}", code),
      "-drive",
      fmt::format("if=pflash,format=raw,file={}", o.vars),
      "-drive",
      fmt::format("file={},format=raw,if=virtio", o.disk),
      "-serial",
      o.console_to_stdout ? std::string("stdio") : fmt::format("file:{}", o.console_log)};
  if (o.secure_boot_firmware) {
    argv.insert(argv.end(), {"-global", "driver=cfi.pflash01,property=secure,value=on"});
  }
  if (!o.cpu.empty()) argv.insert(argv.end(), {"-cpu", o.cpu});
  if (!o.agent_socket.empty()) {
    ::unlink(o.agent_socket.c_str());
    argv.insert(argv.end(),
                {"-device", "virtio-serial-pci", "-chardev",
                 fmt::format("socket,id=agent,path={},server=on,wait=off", o.agent_socket),
                 "-device", "virtserialport,chardev=agent,name=org.ralphos.agent"});
  }
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::string qemu_log = o.console_log + ".qemu";
  machine.started_ = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid < 0) return Error::FromErrno("fork", errno);
  if (pid == 0) {
    int log = ::open(qemu_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (!o.console_to_stdout) {
      if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
      if (log >= 0) ::dup2(log, STDOUT_FILENO);
    }
    if (log >= 0) ::dup2(log, STDERR_FILENO);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  machine.pid_ = pid;
  if (!o.console_to_stdout) {
    // QEMU creates the console file at start-up.
    for (int i = 0; i < 100 && ::access(o.console_log.c_str(), R_OK) != 0; ++i) {
      if (!machine.Reap(false)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return machine;
}

Machine::Machine(Machine&& other) noexcept
    : options_(std::move(other.options_)),
      pid_(other.pid_),
      cursor_(other.cursor_),
      started_(other.started_) {
  other.pid_ = -1;
}

Machine::~Machine() {
  Kill();
}

bool Machine::Reap(bool block) {
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_ || r < 0) {
    pid_ = -1;
    return false;
  }
  return true;  // still running
}

void Machine::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  Reap(true);
}

Result<void> Machine::WaitExit(Seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Reap(false)) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error::Make(ErrorCode::kTimeout,
                         fmt::format("QEMU still running after {} s; console tail:\n{}",
                                     timeout.count(), Tail(Console(), 25)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return {};
}

double Machine::Elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

std::string Machine::Console() const {
  auto text = ReadWholeFile(options_.console_log);
  return text ? *text : std::string();
}

size_t Machine::Count(std::string_view text) const {
  std::string console = Console();
  size_t count = 0;
  for (size_t pos = console.find(text); pos != std::string::npos;
       pos = console.find(text, pos + text.size())) {
    ++count;
  }
  return count;
}

Result<void> Machine::WaitFor(std::string_view text, Seconds timeout) {
  TRY(WaitForAny({std::string(text)}, timeout));
  return {};
}

Result<size_t> Machine::WaitForAny(const std::vector<std::string>& texts, Seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::string console = Console();
    size_t best = std::string::npos;
    size_t best_index = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      size_t pos = console.find(texts[i], cursor_);
      if (pos != std::string::npos && pos < best) {
        best = pos;
        best_index = i;
      }
    }
    if (best != std::string::npos) {
      cursor_ = best + texts[best_index].size();
      return best_index;
    }
    bool alive = Reap(false);
    if (!alive) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("QEMU exited while waiting for '{}'; console tail:\n{}",
                                     texts.front(), Tail(console, 25)));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error::Make(ErrorCode::kTimeout,
                         fmt::format("'{}' did not appear on the console within {} s; console "
                                     "tail:\n{}",
                                     texts.front(), timeout.count(), Tail(console, 25)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

Result<Machine::AgentReply> Machine::Agent(const std::vector<std::string>& argv, Seconds timeout) {
  if (options_.agent_socket.empty()) {
    return Error::Make(ErrorCode::kInvalidState, "this machine has no agent port");
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("socket", errno);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (options_.agent_socket.size() >= sizeof(address.sun_path)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("agent socket path too long: {}", options_.agent_socket));
  }
  std::strcpy(address.sun_path, options_.agent_socket.c_str());
  // reinterpret_cast: the sockets API takes the generic sockaddr.
  while (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error::FromErrno(fmt::format("connect {}", options_.agent_socket), errno);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::string request = nlohmann::json{{"argv", argv}}.dump() + "\n";
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return Error::FromErrno("send to the agent", errno);
  }
  std::string reply;
  char buffer[4096];
  while (reply.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error::Make(ErrorCode::kTimeout, fmt::format("agent gave no answer to {} within {} s",
                                                          request, timeout.count()));
    }
    timeval tv{static_cast<time_t>(left.count() / 1000),
               static_cast<suseconds_t>((left.count() % 1000) * 1000)};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return Error::Make(ErrorCode::kIo, "agent connection closed");
    reply.append(buffer, static_cast<size_t>(n));
  }
  auto json = nlohmann::json::parse(reply.substr(0, reply.find('\n')), nullptr, false);
  if (json.is_discarded() || !json.contains("exit") || !json.contains("output")) {
    return Error::Make(ErrorCode::kCorrupt, fmt::format("agent reply is not JSON: {}", reply));
  }
  return AgentReply{json["exit"].get<int>(), json["output"].get<std::string>()};
}

Result<uint16_t> FreeLocalPort() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("socket", errno);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  // reinterpret_cast: the sockets API takes the generic sockaddr.
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return Error::FromErrno("binding a free port on 127.0.0.1", errno);
  }
  return ntohs(address.sin_port);
}

Result<ScratchDir> ScratchDir::Create(const std::string& parent, const std::string& name) {
  std::error_code ec;
  std::string path = fmt::format("{}/{}-{}", parent, name, ::getpid());
  std::filesystem::remove_all(path, ec);
  std::filesystem::create_directories(path, ec);
  if (ec) return Error::FromErrno(fmt::format("mkdir {}", path), ec.value());
  return ScratchDir(path);
}

ScratchDir::~ScratchDir() {
  if (path_.empty()) return;
  const char* keep = std::getenv("RALPH_E2E_KEEP");
  if (keep && std::string(keep) == "1") return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Result<std::vector<uint8_t>> ReadGuestEfiVar(Machine& machine, const std::string& name_guid) {
  auto reply = TRY(machine.Agent({"efivar", name_guid}, std::chrono::seconds(30)));
  if (reply.exit == 3) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("EFI variable {} does not exist", name_guid));
  }
  if (reply.exit != 0) {
    return Error::Make(ErrorCode::kIo, fmt::format("reading {}: {}", name_guid, reply.output));
  }
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i + 1 < reply.output.size(); i += 2) {
    bytes.push_back(static_cast<uint8_t>(std::stoul(reply.output.substr(i, 2), nullptr, 16)));
  }
  return bytes;
}

}  // namespace ralph::e2e

namespace ralph::e2e {

Result<BootTimeline> MeasureBoot(Machine& machine, double start, std::chrono::seconds timeout) {
  BootTimeline timeline;
  struct Step {
    const char* marker;
    double* at;
  } steps[] = {
      {"BdsDxe: starting Boot", &timeline.firmware_handoff},
      {"Run /init as init process", &timeline.kernel_init},
      {"ralph-early-boot: booting slot", &timeline.early_boot},
      {"up as PID 1", &timeline.pid1},
      {"health gate passed", &timeline.committed},
  };
  for (const auto& step : steps) {
    TRY_CTX(machine.WaitFor(step.marker, timeout), fmt::format("waiting for '{}'", step.marker));
    *step.at = machine.Elapsed() - start;
  }
  return timeline;
}

}  // namespace ralph::e2e

namespace ralph::e2e {

Result<void> CopyPartitionAs(const std::string& from_disk, const std::string& from_label,
                             const std::string& to_disk, const std::string& to_label) {
  DiskLayout from = TRY(ProbeDisk(from_disk));
  DiskLayout to = TRY(ProbeDisk(to_disk));
  const PartitionInfo* source = from.Find(from_label);
  const PartitionInfo* target = to.Find(to_label);
  if (!source || !target || source->size_bytes() != target->size_bytes()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} of {} and {} of {} are missing or differ in size",
                                   from_label, from_disk, to_label, to_disk));
  }
  UniqueFd in(::open(from_disk.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Error::FromErrno(fmt::format("open {}", from_disk), errno);
  UniqueFd out(::open(to_disk.c_str(), O_WRONLY | O_CLOEXEC));
  if (!out) return Error::FromErrno(fmt::format("open {}", to_disk), errno);
  std::vector<char> buffer(1 << 20);
  for (uint64_t done = 0; done < source->size_bytes();) {
    size_t want =
        static_cast<size_t>(std::min<uint64_t>(buffer.size(), source->size_bytes() - done));
    ssize_t n =
        ::pread(in.get(), buffer.data(), want, static_cast<off_t>(source->offset_bytes() + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::FromErrno(fmt::format("read {}", from_disk), n < 0 ? errno : EIO);
    TRY(WriteAt(out.get(), buffer.data(), static_cast<size_t>(n), target->offset_bytes() + done));
    done += static_cast<uint64_t>(n);
  }
  if (::fsync(out.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", to_disk), errno);
  return {};
}

Result<std::string> ReadEspFile(const std::string& disk, const std::string& path) {
  DiskLayout layout = TRY(ProbeDisk(disk));
  const PartitionInfo* esp = layout.Find(kPartEfi);
  if (!esp) return Error::Make(ErrorCode::kNotFound, fmt::format("{} has no EFI partition", disk));
  // mtools reads a FAT inside an image at an offset (image@@offset); "-" as
  // the target writes the file to stdout.
  return TRY_CTX(::ralph::testing::RunCommand({"mcopy", "-n", "-i",
                                               fmt::format("{}@@{}", disk, esp->offset_bytes()),
                                               "::" + path, "-"}),
                 fmt::format("reading {} from the ESP of {} (Debian package mtools)", path, disk));
}

Result<void> WriteEspFile(const std::string& disk, const std::string& path,
                          const std::string& from) {
  DiskLayout layout = TRY(ProbeDisk(disk));
  const PartitionInfo* esp = layout.Find(kPartEfi);
  if (!esp) return Error::Make(ErrorCode::kNotFound, fmt::format("{} has no EFI partition", disk));
  TRY_CTX(::ralph::testing::RunCommand({"mcopy", "-o", "-i",
                                        fmt::format("{}@@{}", disk, esp->offset_bytes()), from,
                                        "::" + path}),
          fmt::format("writing {} to the ESP of {} (Debian package mtools)", path, disk));
  return {};
}

}  // namespace ralph::e2e
