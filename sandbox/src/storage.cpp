#include "sandbox/storage.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "fs_util.h"
#include "platform/unique_fd.h"

extern char** environ;

namespace ralph::sandbox {
namespace {

// Copies only the allocated extents of `from` into `to` (both `size` bytes,
// `to` already truncated to size): the template is ~1 MiB of a sparse 2 GiB.
Result<void> CopySparse(int from, int to, uint64_t size) {
  off_t offset = 0;
  while (static_cast<uint64_t>(offset) < size) {
    off_t data = ::lseek(from, offset, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no more data
      return Error::FromErrno("lseek SEEK_DATA", errno);
    }
    off_t hole = ::lseek(from, data, SEEK_HOLE);
    if (hole < 0) return Error::FromErrno("lseek SEEK_HOLE", errno);
    loff_t in = data, out = data;
    size_t left = static_cast<size_t>(hole - data);
    while (left > 0) {
      ssize_t n = ::copy_file_range(from, &in, to, &out, left, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Error::FromErrno("copy_file_range", errno);
      if (n == 0) break;
      left -= static_cast<size_t>(n);
    }
    offset = hole;
  }
  return {};
}

Result<void> RunTool(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = ::posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ);
  if (rc != 0) return Error::FromErrno(fmt::format("spawning {} (package e2fsprogs)", argv[0]), rc);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Error::FromErrno(fmt::format("waiting for {}", argv[0]), errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Error::Make(ErrorCode::kIo, fmt::format("{} failed with status {}", argv[0], status));
  return {};
}

// Attaches `image_fd` to a free loop device with autoclear (the device
// detaches itself when its last user, the mount, goes away). Returns the
// device's fd; "losetup -f" races with other users, so EBUSY retries.
Result<std::pair<UniqueFd, std::string>> AttachLoop(int image_fd, bool read_only) {
  UniqueFd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!control) return Error::FromErrno("open /dev/loop-control", errno);
  for (int attempt = 0; attempt < 64; ++attempt) {
    int number = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (number < 0) return Error::FromErrno("LOOP_CTL_GET_FREE", errno);
    std::string device = fmt::format("/dev/loop{}", number);
    UniqueFd loop(::open(device.c_str(), O_RDWR | O_CLOEXEC));
    if (!loop) {
      if (errno == ENOENT) continue;
      return Error::FromErrno(fmt::format("open {}", device), errno);
    }
    loop_config config;
    std::memset(&config, 0, sizeof config);
    config.fd = static_cast<uint32_t>(image_fd);
    config.block_size = 4096;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
    // LOOP_CONFIGURE (kernel >= 5.8) sets fd and status in one ioctl.
    if (::ioctl(loop.get(), LOOP_CONFIGURE, &config) == 0)
      return std::make_pair(std::move(loop), device);
    if (errno != EBUSY) return Error::FromErrno(fmt::format("LOOP_CONFIGURE {}", device), errno);
  }
  return Error::Make(ErrorCode::kBusy, "no free loop device after 64 attempts");
}

}  // namespace

Result<void> MountImageReadOnly(const std::string& image, const std::string& mount_point) {
  UniqueFd image_fd(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!image_fd) return Error::FromErrno(fmt::format("open {}", image), errno);
  auto [loop, device] =
      TRY_CTX(AttachLoop(image_fd.get(), true), fmt::format("attaching {}", image));
  int err = 0;
  for (const char* fstype : {"squashfs", "erofs"}) {
    if (::mount(device.c_str(), mount_point.c_str(), fstype, MS_RDONLY | MS_NOSUID | MS_NODEV,
                nullptr) == 0)
      return {};
    err = errno;
  }
  ::ioctl(loop.get(), LOOP_CLR_FD, 0);
  return Error::FromErrno(ErrorCode::kInvalidArgument,
                          fmt::format("mount {} as squashfs or erofs on {}", image, mount_point),
                          err);
}

UpperVolume::~UpperVolume() {
  IgnoreError(Destroy());
}

Result<void> UpperVolume::Destroy() {
  // The name first: while the loop device still holds the file this is a
  // directory update only; the blocks are freed when the device lets go.
  if (!image_.empty()) {
    if (::unlink(image_.c_str()) != 0 && errno != ENOENT)
      return Error::FromErrno(fmt::format("unlink {}", image_), errno);
    image_.clear();
  }
  if (mounted_) {
    // MNT_DETACH: the job's mount namespace may still pin the superblock for
    // a moment while its last process exits; the loop device detaches
    // (autoclear, asynchronously) when the last reference goes.
    if (::umount2(mount_point_.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
      return Error::FromErrno(fmt::format("umount {}", mount_point_), errno);
    mounted_ = false;
    ::rmdir(mount_point_.c_str());
  }
  return {};
}

Result<std::unique_ptr<LoopVolumeFactory>> LoopVolumeFactory::Open(const std::string& state_dir) {
  TRY(MakeDirs(state_dir, 0711));
  return std::unique_ptr<LoopVolumeFactory>(new LoopVolumeFactory(state_dir));
}

Result<std::string> LoopVolumeFactory::TemplateFor(uint64_t bytes, uint32_t owner_uid) {
  auto key = std::make_pair(bytes, owner_uid);
  if (auto it = templates_.find(key); it != templates_.end()) return it->second;
  std::string path = fmt::format("{}/template-{}-{}.img", state_dir_, bytes, owner_uid);
  // Made by an earlier run (published by rename, so complete when present).
  if (PathExists(path)) {
    templates_[key] = path;
    return path;
  }
  std::string temp = path + fmt::format(".tmp{}", ::getpid());
  {
    UniqueFd fd(::open(temp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return Error::FromErrno(fmt::format("create {}", temp), errno);
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0)
      return Error::FromErrno(fmt::format("truncate {}", temp), errno);
  }
  // No journal (the upper is scratch space, lost with the job anyway),
  // lazy inode tables (nothing to zero on a sparse file), no reserved blocks,
  // 4 KiB blocks to match the loop device's block size whatever the size.
  auto made =
      RunTool({"mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-E",
               fmt::format("lazy_itable_init=1,nodiscard,root_owner={}:{}", owner_uid, owner_uid),
               "-m", "0", temp});
  if (!made) {
    ::unlink(temp.c_str());
    return std::move(made).error().WithContext(fmt::format("formatting {}", temp));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0)
    return Error::FromErrno(fmt::format("rename {}", temp), errno);
  templates_[key] = path;
  return path;
}

LoopVolumeFactory::~LoopVolumeFactory() {
  IgnoreError(DrainPool());
}

Result<void> LoopVolumeFactory::DrainPool() {
  Result<void> first;
  while (!pool_.empty()) {
    std::unique_ptr<UpperVolume> volume = std::move(pool_.back());
    pool_.pop_back();
    auto result = Park(std::move(volume));
    if (!result && first) first = std::move(result);
  }
  return first;
}

Result<void> LoopVolumeFactory::Release(std::unique_ptr<UpperVolume> volume) {
  if (!volume) return {};
  struct statfs st;
  // More than this many inodes in use: destroying is cheaper than wiping.
  constexpr uint64_t kMaxInodesToWipe = 2000;
  bool keep = volume->mounted_ && ::statfs(volume->mount_point_.c_str(), &st) == 0 &&
              st.f_files - st.f_ffree <= kMaxInodesToWipe;
  if (keep) {
    UniqueFd root(::open(volume->mount_point_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    keep = root.valid();
    if (keep) {
      // Everything but lost+found (made by mkfs, needed by e2fsck).
      for (const char* name : {"upper", "work"}) {
        if (!RemoveTree(volume->mount_point_ + "/" + name)) keep = false;
      }
    }
  }
  if (!keep) return volume->Destroy();
  if (pool_.size() >= max_pooled_) return Park(std::move(volume));
  pool_.push_back(std::move(volume));
  return {};
}

Result<std::unique_ptr<UpperVolume>> LoopVolumeFactory::Acquire(uint64_t bytes,
                                                                uint32_t owner_uid) {
  for (auto it = pool_.begin(); it != pool_.end(); ++it) {
    if ((*it)->bytes_ == bytes && (*it)->owner_uid_ == owner_uid) {
      std::unique_ptr<UpperVolume> volume = std::move(*it);
      pool_.erase(it);
      return volume;
    }
  }
  std::string dir = state_dir_ + "/volumes";
  TRY(MakeDirs(dir, 0711));
  uint64_t number = next_volume_++;
  std::string image = fmt::format("{}/{}-{}.img", dir, ::getpid(), number);
  std::string mount_point = fmt::format("{}/{}-{}", dir, ::getpid(), number);
  // A parked image of this size and owner, if one is free: no copy, and no
  // image to free at the end.
  if (ClaimParked(bytes, owner_uid, image)) {
    std::unique_ptr<UpperVolume> volume(new UpperVolume(image, mount_point, bytes, owner_uid));
    volume->mounted_ = false;
    UniqueFd image_fd(::open(image.c_str(), O_RDWR | O_CLOEXEC));
    if (image_fd && MountImage(*volume, image_fd.get())) return volume;
    IgnoreError(volume->Destroy());  // unusable: drop it, make a new one below
  }
  std::string template_path =
      TRY_CTX(TemplateFor(bytes, owner_uid), "making the upper-layer template");
  UniqueFd source(::open(template_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!source) return Error::FromErrno(fmt::format("open {}", template_path), errno);
  UniqueFd image_fd(::open(image.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!image_fd) return Error::FromErrno(fmt::format("create {}", image), errno);
  // From here on the volume owns the image (and later the mount).
  std::unique_ptr<UpperVolume> volume(new UpperVolume(image, mount_point, bytes, owner_uid));
  volume->mounted_ = false;
  if (::ftruncate(image_fd.get(), static_cast<off_t>(bytes)) != 0)
    return Error::FromErrno(fmt::format("truncate {}", image), errno);
  TRY_CTX(CopySparse(source.get(), image_fd.get(), bytes),
          fmt::format("copying {} to {}", template_path, image));
  TRY(MountImage(*volume, image_fd.get()));
  return volume;
}

Result<void> LoopVolumeFactory::MountImage(UpperVolume& volume, int image_fd) {
  auto [loop, device] =
      TRY_CTX(AttachLoop(image_fd, false), fmt::format("attaching {}", volume.image_));
  if (::mkdir(volume.mount_point_.c_str(), 0755) != 0 && errno != EEXIST)
    return Error::FromErrno(fmt::format("mkdir {}", volume.mount_point_), errno);
  // noinit_itable: nothing to zero in a sparse image, no background thread.
  if (::mount(device.c_str(), volume.mount_point_.c_str(), "ext4",
              MS_NOSUID | MS_NODEV | MS_NOATIME, "noinit_itable,nobarrier") != 0) {
    int err = errno;
    ::ioctl(loop.get(), LOOP_CLR_FD, 0);
    return Error::FromErrno(
        fmt::format("mount {} ({}) on {}", device, volume.image_, volume.mount_point_), err);
  }
  volume.loop_number_ = std::atoi(device.c_str() + std::strlen("/dev/loop"));
  volume.mounted_ = true;
  return {};
}

namespace {
constexpr size_t kMaxParked = 16;
// A parked image that holds more than this on the host is freed instead.
constexpr uint64_t kMaxParkedAllocated = 16ull << 20;
std::string ParkedPrefix(uint64_t bytes, uint32_t owner_uid) {
  return fmt::format("parked-{}-{}-", bytes, owner_uid);
}
}  // namespace

bool LoopVolumeFactory::ClaimParked(uint64_t bytes, uint32_t owner_uid, const std::string& image) {
  std::string dir = state_dir_ + "/volumes";
  DIR* listing = ::opendir(dir.c_str());
  if (!listing) return false;
  std::unique_ptr<DIR, int (*)(DIR*)> owner(listing, ::closedir);
  std::string prefix = ParkedPrefix(bytes, owner_uid);
  while (dirent* entry = ::readdir(listing)) {
    std::string name = entry->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    // "parked-<bytes>-<uid>-loop<N>-<unique>.img": the loop device that last
    // held it must have let go (autoclear runs asynchronously after the
    // unmount), or two filesystems would share one image.
    int loop_number = -1;
    if (std::sscanf(name.c_str() + prefix.size(), "loop%d-", &loop_number) != 1) continue;
    auto backing = ReadFileString(fmt::format("/sys/block/loop{}/loop/backing_file", loop_number));
    if (backing && backing->find(name) != std::string::npos) continue;
    // rename() is the claim: of several services, one wins, the others get ENOENT.
    if (::rename((dir + "/" + name).c_str(), image.c_str()) == 0) return true;
  }
  return false;
}

Result<void> LoopVolumeFactory::Park(std::unique_ptr<UpperVolume> volume) {
  std::string dir = state_dir_ + "/volumes";
  struct stat st;
  size_t parked = 0;
  if (DIR* listing = ::opendir(dir.c_str())) {
    while (dirent* entry = ::readdir(listing))
      parked += std::string(entry->d_name).rfind("parked-", 0) == 0;
    ::closedir(listing);
  }
  bool keep = volume->mounted_ && parked < kMaxParked && ::stat(volume->image_.c_str(), &st) == 0 &&
              static_cast<uint64_t>(st.st_blocks) * 512 <= kMaxParkedAllocated;
  // A plain unmount: it fails (EBUSY) rather than detaching a filesystem
  // someone still uses.
  if (!keep || ::umount2(volume->mount_point_.c_str(), 0) != 0) return volume->Destroy();
  volume->mounted_ = false;
  ::rmdir(volume->mount_point_.c_str());
  std::string parked_path =
      fmt::format("{}/{}loop{}-{}-{}.img", dir, ParkedPrefix(volume->bytes_, volume->owner_uid_),
                  volume->loop_number_, ::getpid(), next_volume_++);
  if (::rename(volume->image_.c_str(), parked_path.c_str()) != 0) return volume->Destroy();
  volume->image_.clear();
  return {};
}

}  // namespace ralph::sandbox
