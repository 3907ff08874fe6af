// A loop device attached to an image for the duration of a test (RAII), the
// way the tests and the image tooling attach disks: `losetup -f -P --show`.
//
// Some kernels (like this development host's) are built without the GPT
// partition parser, so `losetup -P` yields no /dev/loopNpM; Attach() then adds
// the partitions libblkid finds with SyncKernelPartitions() (BLKPG, what
// `partx -a` does). The loop device's partition scanning (-P) makes the
// kernel drop them all again on detach. The device is marked LO_FLAGS_AUTOCLEAR while this object
// holds it open, so it is detached even if the test process dies.
#pragma once

#include <string>
#include <vector>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::testing {

class LoopDevice {
 public:
  // kNotFound (naming the package) when losetup is missing.
  static Result<LoopDevice> Attach(const std::string& image);

  LoopDevice(LoopDevice&&) noexcept = default;
  LoopDevice& operator=(LoopDevice&&) noexcept;
  ~LoopDevice();

  // "/dev/loop3"
  const std::string& device() const { return device_; }
  // Makes the kernel's partitions match the GPT on the image (after it was
  // rewritten through another path, for example).
  Result<void> SyncPartitions();

  // Detaches now and waits until the kernel has let go of the image (kBusy
  // after 10 s); the destructor does this too.
  Result<void> Detach();

 private:
  LoopDevice(std::string device, std::string image, UniqueFd fd)
      : device_(std::move(device)), image_(std::move(image)), fd_(std::move(fd)) {}

  std::string device_;
  std::string image_;  // absolute, as the kernel reports the backing file
  UniqueFd fd_;
};

// Runs argv (argv[0] looked up in PATH) and returns its stdout; kIo with
// its stderr and exit status when it fails.
Result<std::string> RunCommand(const std::vector<std::string>& argv);

}  // namespace ralph::testing
