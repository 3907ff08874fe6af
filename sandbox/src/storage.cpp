#include "sandbox/storage.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "fs_util.h"
#include "platform/file_io.h"
#include "platform/process.h"
#include "platform/unique_fd.h"

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

namespace {

constexpr const char kImageSuffix[] = ".img";
// Images parked unmounted, and the space each may hold on the host.
constexpr size_t kMaxCold = 16;
constexpr uint64_t kMaxColdAllocated = 16ull << 20;
// More than this many inodes in use: destroying is cheaper than wiping.
constexpr uint64_t kMaxInodesToWipe = 2000;
// What a job leaves in its volume (see service.cpp); `root`, the overlay's
// mount point, stays (empty) and lost+found is mkfs's.
constexpr const char* kJobEntries[] = {"upper", "work", "resolv.conf", "base"};

std::string VolumePrefix(uint64_t bytes, uint32_t owner_uid) {
  return fmt::format("vol-{}-{}-", bytes, owner_uid);
}

bool EndsWith(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string WithoutImageSuffix(const std::string& image) {
  return image.substr(0, image.size() - (sizeof kImageSuffix - 1));
}

// A mount point: on another device than its parent directory.
bool IsMountPoint(const std::string& path) {
  struct stat st, parent;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  if (::stat((path + "/..").c_str(), &parent) != 0) return false;
  return st.st_dev != parent.st_dev || st.st_ino == parent.st_ino;
}

// Whether a loop device still has `image` as its backing file (it detaches
// asynchronously after its last unmount; two filesystems must never share
// one image).
bool LoopHolds(const std::string& image) {
  DIR* listing = ::opendir("/sys/block");
  if (!listing) return true;  // cannot tell: assume it does
  std::unique_ptr<DIR, int (*)(DIR*)> owner(listing, ::closedir);
  while (dirent* entry = ::readdir(listing)) {
    if (std::strncmp(entry->d_name, "loop", 4) != 0) continue;
    auto backing = ReadFileString(fmt::format("/sys/block/{}/loop/backing_file", entry->d_name));
    if (backing && backing->rfind(image, 0) == 0 &&
        (backing->size() == image.size() || (*backing)[image.size()] == '\n' ||
         (*backing)[image.size()] == ' '))
      return true;
  }
  return false;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* listing = ::opendir(dir.c_str());
  if (!listing) return names;
  std::unique_ptr<DIR, int (*)(DIR*)> owner(listing, ::closedir);
  while (dirent* entry = ::readdir(listing)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  return names;
}

// Opens and locks `path` without waiting; empty when another process holds
// it or it was deleted meanwhile (a lock on an unlinked file guards nothing).
UniqueFd LockImage(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return {};
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return {};
  struct stat held, named;
  if (::fstat(fd.get(), &held) != 0 || ::stat(path.c_str(), &named) != 0 ||
      held.st_dev != named.st_dev || held.st_ino != named.st_ino)
    return {};
  return fd;
}

bool PidAlive(pid_t pid) {
  return ::kill(pid, 0) == 0 || errno == EPERM;
}

// Whether a mounted volume holds a job's files.
bool Dirty(const std::string& mount_point) {
  for (const char* entry : kJobEntries) {
    if (PathExists(mount_point + "/" + entry)) return true;
  }
  return false;
}

// Empties a volume of a finished (or dead) job: unmounts a base image a
// launcher had mounted in it, removes the job's entries. False when it holds
// too much to be worth wiping, or a removal failed.
bool Wipe(const std::string& mount_point) {
  struct statfs st;
  if (::statfs(mount_point.c_str(), &st) != 0 || st.f_files - st.f_ffree > kMaxInodesToWipe)
    return false;
  std::string base = mount_point + "/base";
  if (::umount2(base.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) return false;
  for (const char* name : kJobEntries) {
    if (!RemoveTree(mount_point + "/" + name)) return false;
  }
  return true;
}

}  // namespace

UpperVolume::~UpperVolume() {
  IgnoreError(Destroy());
}

void UpperVolume::Unlock() {
  image_.clear();
  mounted_ = false;
  lock_.reset();
}

Result<void> UpperVolume::Destroy() {
  // The name first, still locked: nobody can take it any more. While the
  // loop device still holds the file this is a directory update only; the
  // blocks are freed when the device lets go.
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
  }
  if (lock_) {
    ::rmdir(mount_point_.c_str());
    lock_.reset();
  }
  return {};
}

Result<std::unique_ptr<LoopVolumeFactory>> LoopVolumeFactory::Open(const std::string& state_dir,
                                                                   VolumeOptions options) {
  TRY(MakeDirs(state_dir, 0711));
  std::unique_ptr<LoopVolumeFactory> factory(new LoopVolumeFactory(state_dir, options));
  factory->volumes_dir_ = state_dir + "/volumes";
  TRY(MakeDirs(factory->volumes_dir_, 0711));
  if (options.sweep_at_open) TRY(factory->Sweep());
  return factory;
}

Result<void> LoopVolumeFactory::Sweep() {
  // One volume that cannot be removed must not keep the others: every entry
  // is tried, and the failures are returned together.
  std::vector<Error> failures;
  auto check = [&](int rc, std::string_view what, const std::string& path) {
    int err = errno;
    if (rc != 0 && err != ENOENT)
      failures.push_back(Error::FromErrno(fmt::format("{} {}", what, path), err));
  };
  for (const std::string& name : ListDir(volumes_dir_)) {
    std::string path = volumes_dir_ + "/" + name;
    if (name.rfind(".tmp-", 0) == 0) {
      // An image being made; its maker holds the lock until it is renamed.
      if (UniqueFd held = LockImage(path)) {
        check(::unlink(path.c_str()), "unlink", path);
        ++sweep_.destroyed;
      }
      continue;
    }
    if (name.rfind("vol-", 0) == 0 && EndsWith(name, kImageSuffix)) {
      UniqueFd held = LockImage(path);
      if (!held) continue;  // in use
      std::string mount_point = WithoutImageSuffix(path);
      if (!IsMountPoint(mount_point)) {
        // Cold; a mount point left empty (or none: ENOENT).
        check(::rmdir(mount_point.c_str()), "rmdir", mount_point);
        continue;
      }
      if (!Dirty(mount_point)) continue;
      std::unique_ptr<UpperVolume> volume(
          new UpperVolume(path, mount_point, 0, 0, std::move(held)));
      volume->mounted_ = true;
      if (Wipe(mount_point)) {
        ++sweep_.wiped;
        volume->Unlock();
      } else {
        ++sweep_.destroyed;
        if (auto destroyed = volume->Destroy(); !destroyed) failures.push_back(destroyed.error());
      }
      continue;
    }
    // The per-process naming of earlier releases ("<pid>-<n>" mounted on
    // "<pid>-<n>.img", "parked-..." images): nothing locks them, so only a
    // dead pid's are removed.
    pid_t pid = 0;
    int number = 0;
    char rest = 0;
    if (std::sscanf(name.c_str(), "%d-%d%c", &pid, &number, &rest) == 2 && pid > 0 &&
        !PidAlive(pid)) {
      if (IsMountPoint(path)) {
        int rc = ::umount2(path.c_str(), MNT_DETACH);
        if (rc == 0) ++sweep_.unmounted;
        check(rc, "umount", path);
      }
      std::string image = path + kImageSuffix;
      check(::rmdir(path.c_str()), "rmdir", path);
      check(::unlink(image.c_str()), "unlink", image);
    }
  }
  if (failures.empty()) return {};
  Error first = failures.front();
  if (failures.size() == 1) return first.WithContext(fmt::format("sweeping {}", volumes_dir_));
  return first.WithContext(
      fmt::format("sweeping {} ({} failures, the first)", volumes_dir_, failures.size()));
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
  AtomicFile file = TRY(AtomicFile::Create(path, 0600));
  const std::string& temp = file.temp_path();
  if (::ftruncate(file.fd(), static_cast<off_t>(bytes)) != 0)
    return Error::FromErrno(fmt::format("truncate {}", temp), errno);
  // No journal (the upper is scratch space, lost with the job anyway),
  // lazy inode tables (nothing to zero on a sparse file), no reserved blocks,
  // 4 KiB blocks to match the loop device's block size whatever the size.
  TRY_CTX(
      RunProgramChecked({.argv = {"mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-E",
                                  fmt::format("lazy_itable_init=1,nodiscard,root_owner={}:{}",
                                              owner_uid, owner_uid),
                                  "-m", "0", temp},
                         .package = "e2fsprogs"}),
      fmt::format("formatting {}", temp));
  // Scratch space, remade when lost: atomic for other processes, no sync.
  TRY(file.Commit(Durability::kNone));
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
    auto result = LetGo(std::move(volume), true);
    if (!result && first) first = std::move(result);
  }
  return first;
}

Result<void> LoopVolumeFactory::Release(std::unique_ptr<UpperVolume> volume) {
  if (!volume) return {};
  if (!volume->mounted_) return volume->Destroy();
  bool pooled = pool_.size() < options_.max_pooled;
  if (options_.defer_wipe && !pooled) return LetGo(std::move(volume), false);
  if (!Wipe(volume->mount_point_)) return volume->Destroy();
  if (pooled) {
    pool_.push_back(std::move(volume));
    return {};
  }
  return LetGo(std::move(volume), true);
}

std::unique_ptr<UpperVolume> LoopVolumeFactory::TryLock(const std::string& name, uint64_t bytes,
                                                        uint32_t owner_uid) {
  std::string image = volumes_dir_ + "/" + name;
  UniqueFd held = LockImage(image);
  if (!held) return nullptr;
  std::string mount_point = WithoutImageSuffix(image);
  std::unique_ptr<UpperVolume> volume(
      new UpperVolume(image, mount_point, bytes, owner_uid, std::move(held)));
  if (IsMountPoint(mount_point)) {
    volume->mounted_ = true;
  } else if (LoopHolds(image)) {
    volume->Unlock();
    return nullptr;
  } else if (!MountImage(*volume)) {
    IgnoreError(volume->Destroy());  // unusable: drop it
    return nullptr;
  }
  // Whatever a job left in it goes before the next one sees it: a killed
  // process's, one let go unwiped (defer_wipe), one drained dirty.
  if (!Wipe(mount_point)) {
    IgnoreError(volume->Destroy());
    return nullptr;
  }
  return volume;
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
  // The state dir's unlocked volumes of this size and owner: warm ones
  // first (no mount to make).
  std::string prefix = VolumePrefix(bytes, owner_uid);
  std::vector<std::string> clean, dirty, cold;
  for (std::string& name : ListDir(volumes_dir_)) {
    if (name.rfind(prefix, 0) != 0 || !EndsWith(name, kImageSuffix)) continue;
    std::string mount_point = volumes_dir_ + "/" + WithoutImageSuffix(name);
    if (!IsMountPoint(mount_point))
      cold.push_back(std::move(name));
    else
      (Dirty(mount_point) ? dirty : clean).push_back(std::move(name));
  }
  // Clean warm ones first: no wipe on this job's path. With defer_wipe,
  // while fewer than two warm ones exist a new one is made rather than a
  // dirty one wiped here: with two, a launcher's job takes the clean one
  // and its Housekeep (Sweep) empties the other for the next launcher.
  if (options_.defer_wipe && clean.empty() && dirty.size() < 2) dirty.clear();
  for (const auto* names : {&clean, &dirty, &cold}) {
    for (const std::string& name : *names) {
      if (auto volume = TryLock(name, bytes, owner_uid)) return volume;
    }
  }
  std::string template_path =
      TRY_CTX(TemplateFor(bytes, owner_uid), "making the upper-layer template");
  UniqueFd source(::open(template_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!source) return Error::FromErrno(fmt::format("open {}", template_path), errno);
  uint64_t number = next_volume_++;
  // Made under a name no other process takes, locked, then published. Other
  // factories of this process (ralphd runs a service per job) count from 1
  // too, and a dead process with this pid may have left one: the next
  // number then.
  std::string temp;
  UniqueFd image_fd;
  while (true) {
    temp = fmt::format("{}/.tmp-{}-{}{}", volumes_dir_, ::getpid(), number, kImageSuffix);
    image_fd.reset(::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (image_fd || errno != EEXIST) break;
    number = next_volume_++;
  }
  if (!image_fd) return Error::FromErrno(fmt::format("create {}", temp), errno);
  auto image_name = [&] {
    return fmt::format("{}/{}{}-{}{}", volumes_dir_, prefix, ::getpid(), number, kImageSuffix);
  };
  std::string image = image_name();
  if (::flock(image_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    return Error::FromErrno(fmt::format("flock {}", temp), err);
  }
  // From here on the volume owns the image (and later the mount).
  std::unique_ptr<UpperVolume> volume(
      new UpperVolume(temp, WithoutImageSuffix(image), bytes, owner_uid, std::move(image_fd)));
  if (::ftruncate(volume->lock_.get(), static_cast<off_t>(bytes)) != 0)
    return Error::FromErrno(fmt::format("truncate {}", temp), errno);
  TRY_CTX(CopySparse(source.get(), volume->lock_.get(), bytes),
          fmt::format("copying {} to {}", template_path, temp));
  // Under a name nobody has: another factory of this process, or an earlier
  // process with this pid, may have left a volume of that name, which a
  // plain rename would replace under its mount.
  while (::renameat2(AT_FDCWD, temp.c_str(), AT_FDCWD, image.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno != EEXIST) return Error::FromErrno(fmt::format("rename {}", temp), errno);
    number = next_volume_++;
    image = image_name();
  }
  volume->image_ = image;
  volume->mount_point_ = WithoutImageSuffix(image);
  TRY(MountImage(*volume));
  return volume;
}

Result<void> LoopVolumeFactory::MountImage(UpperVolume& volume) {
  // The loop device keeps the file it is given open for as long as it is
  // attached: its own open file description, not the locked one, or the
  // lock would outlive this process.
  UniqueFd image_fd(::open(volume.image_.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
  if (!image_fd) return Error::FromErrno(fmt::format("open {}", volume.image_), errno);
  auto [loop, device] =
      TRY_CTX(AttachLoop(image_fd.get(), false), fmt::format("attaching {}", volume.image_));
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
  volume.mounted_ = true;
  return {};
}

Result<void> LoopVolumeFactory::LetGo(std::unique_ptr<UpperVolume> volume, bool wiped) {
  size_t mounted = 0, cold = 0;
  for (const std::string& name : ListDir(volumes_dir_)) {
    if (name.rfind("vol-", 0) != 0 || !EndsWith(name, kImageSuffix)) continue;
    ++(IsMountPoint(volumes_dir_ + "/" + WithoutImageSuffix(name)) ? mounted : cold);
  }
  // `mounted` counts this one.
  if (volume->mounted_ && mounted <= options_.max_shared_mounted) {
    volume->Unlock();
    return {};
  }
  if (!wiped && !Wipe(volume->mount_point_)) return volume->Destroy();
  struct stat st;
  bool keep = volume->mounted_ && cold < kMaxCold && ::fstat(volume->lock_.get(), &st) == 0 &&
              static_cast<uint64_t>(st.st_blocks) * 512 <= kMaxColdAllocated;
  // A plain unmount: it fails (EBUSY) rather than detaching a filesystem
  // someone still uses.
  if (!keep || ::umount2(volume->mount_point_.c_str(), 0) != 0) return volume->Destroy();
  ::rmdir(volume->mount_point_.c_str());
  volume->Unlock();
  return {};
}

Result<size_t> UnmountIdleVolumes(const std::string& state_dir) {
  std::string dir = state_dir + "/volumes";
  size_t count = 0;
  for (const std::string& name : ListDir(dir)) {
    if (name.rfind("vol-", 0) != 0 || !EndsWith(name, kImageSuffix)) continue;
    UniqueFd held = LockImage(dir + "/" + name);
    if (!held) continue;
    std::string mount_point = dir + "/" + WithoutImageSuffix(name);
    if (!IsMountPoint(mount_point)) continue;
    // Best effort: whoever mounts it again wipes it anyway (TryLock).
    Wipe(mount_point);
    if (::umount2(mount_point.c_str(), 0) != 0)
      return Error::FromErrno(fmt::format("umount {}", mount_point), errno);
    ::rmdir(mount_point.c_str());
    ++count;
  }
  return count;
}

}  // namespace ralph::sandbox
