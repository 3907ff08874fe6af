#include "tests/support/loop_device.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "drivers/disk.h"

namespace ralph::testing {
namespace {

std::string ReadAll(int fd) {
  std::string out;
  char buffer[4096];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

std::string Trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

Result<std::string> RunCommand(const std::vector<std::string>& argv) {
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) < 0) return Error::FromErrno("pipe2", errno);
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) < 0) return Error::FromErrno("pipe2", errno);
  UniqueFd err_read(err_pipe[0]), err_write(err_pipe[1]);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Error::FromErrno("fork", errno);
  if (pid == 0) {
    ::dup2(out_write.get(), STDOUT_FILENO);
    ::dup2(err_write.get(), STDERR_FILENO);
    ::execvp(args[0], args.data());
    _exit(127);
  }
  out_write.reset();
  err_write.reset();
  // Small outputs only (losetup): read stdout fully, then stderr.
  std::string out = ReadAll(out_read.get());
  std::string err = ReadAll(err_read.get());
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Error::FromErrno("waitpid", errno);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("{} is not installed (Debian package util-linux)", argv[0]));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string command;
    for (const std::string& arg : argv) command += (command.empty() ? "" : " ") + arg;
    return Error::Make(ErrorCode::kIo,
                       fmt::format("{} failed (status {}): {}", command, status, Trim(err)));
  }
  return out;
}

Result<LoopDevice> LoopDevice::Attach(const std::string& image) {
  std::string device = Trim(TRY(RunCommand({"losetup", "-f", "-P", "--show", image})));
  if (!device.starts_with("/dev/loop")) {
    return Error::Make(ErrorCode::kIo, fmt::format("losetup printed \"{}\"", device));
  }
  UniqueFd fd(::open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    Error error = Error::FromErrno(fmt::format("open {}", device), errno);
    IgnoreError(RunCommand({"losetup", "-d", device}));
    return error;
  }
  std::error_code error;
  std::string absolute = std::filesystem::canonical(image, error).string();
  LoopDevice loop(std::move(device), error ? image : absolute, std::move(fd));
  // From here the destructor detaches on every path.
  struct loop_info64 info {};
  if (::ioctl(loop.fd_.get(), LOOP_GET_STATUS64, &info) < 0) {
    return Error::FromErrno(fmt::format("LOOP_GET_STATUS64 {}", loop.device_), errno);
  }
  info.lo_flags |= LO_FLAGS_AUTOCLEAR;
  if (::ioctl(loop.fd_.get(), LOOP_SET_STATUS64, &info) < 0) {
    return Error::FromErrno(fmt::format("LOOP_SET_STATUS64 {}", loop.device_), errno);
  }
  TRY(loop.SyncPartitions());
  return loop;
}

Result<void> LoopDevice::SyncPartitions() {
  auto layout = ProbeDisk(device_);
  if (!layout) {
    // No partition table (yet): nothing to add.
    if (layout.error().code() == ErrorCode::kCorrupt) return {};
    return std::move(layout).error();
  }
  return SyncKernelPartitions(device_);
}

Result<void> LoopDevice::Detach() {
  if (!fd_) return {};
  // LOOP_CLR_FD while we hold it open only marks it autoclear; the detach
  // happens at the last close, which is ours below unless somebody else
  // (a parallel libblkid scan of all block devices, udev) has it open for a
  // moment. Wait for that, so "detached" means detached.
  int rc = ::ioctl(fd_.get(), LOOP_CLR_FD, 0);
  int err = errno;
  fd_.reset();
  if (rc < 0 && err != ENXIO) return Error::FromErrno(fmt::format("detaching {}", device_), err);
  std::string backing = fmt::format("/sys/block/{}/loop/backing_file",
                                    std::filesystem::path(device_).filename().string());
  for (int attempt = 0; attempt < 1000; ++attempt) {
    std::ifstream in(backing);
    std::string file;
    if (!in || !std::getline(in, file) || file != image_) return {};
    ::usleep(10 * 1000);
  }
  return Error::Make(ErrorCode::kBusy,
                     fmt::format("{} is still attached to {} 10 s after detaching: somebody keeps "
                                 "it open",
                                 device_, image_));
}

LoopDevice& LoopDevice::operator=(LoopDevice&& other) noexcept {
  if (this != &other) {
    IgnoreError(Detach());
    device_ = std::move(other.device_);
    image_ = std::move(other.image_);
    fd_ = std::move(other.fd_);
  }
  return *this;
}

LoopDevice::~LoopDevice() {
  IgnoreError(Detach());
}

}  // namespace ralph::testing
