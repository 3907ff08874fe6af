// The writable upper layer of a job's rootfs, with a real disk quota: each
// job gets its own ext4 filesystem of exactly Limits::disk_bytes, in a sparse
// image file on the state directory (VAR on the appliance), loop-mounted.
// A full disk gives the job ENOSPC and nothing else; deleting the image frees
// it. (ext4/XFS project quotas would avoid the loop device but need
// CONFIG_QUOTA and CONFIG_QFMT_V2; the development kernel lacks the latter.)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::sandbox {

// A mounted per-job volume. Destroy() (or the destructor) unmounts it, which
// detaches the loop device (autoclear), and deletes the image.
class UpperVolume {
 public:
  ~UpperVolume();
  UpperVolume(const UpperVolume&) = delete;
  UpperVolume& operator=(const UpperVolume&) = delete;

  const std::string& mount_point() const { return mount_point_; }
  Result<void> Destroy();

 private:
  friend class LoopVolumeFactory;
  UpperVolume(std::string image, std::string mount_point, uint64_t bytes, uint32_t owner_uid)
      : image_(std::move(image)),
        mount_point_(std::move(mount_point)),
        bytes_(bytes),
        owner_uid_(owner_uid) {}
  std::string image_;
  std::string mount_point_;
  uint64_t bytes_;
  uint32_t owner_uid_;
  int loop_number_ = -1;
  bool mounted_ = true;
};

// Mounts a squashfs or erofs image read-only on `mount_point` through a
// read-only, autoclear loop device (the filesystem type is tried in that
// order). Undo with umount2(mount_point, MNT_DETACH).
Result<void> MountImageReadOnly(const std::string& image, const std::string& mount_point);

class LoopVolumeFactory {
 public:
  // `state_dir` holds the formatted template images (one per size), made on
  // first use with mkfs.ext4 (e2fsprogs).
  static Result<std::unique_ptr<LoopVolumeFactory>> Open(const std::string& state_dir);

  // A mounted, empty volume of `bytes` whose root is owned by
  // `owner_uid`:`owner_uid`: a released one from the pool when there is one,
  // else a new <state_dir>/volumes/<n>.img (a copy of the template's few used
  // blocks; the rest stays sparse) on a free loop device, mounted
  // nosuid,nodev on <state_dir>/volumes/<n>.
  Result<std::unique_ptr<UpperVolume>> Acquire(uint64_t bytes, uint32_t owner_uid);

  // Returns a volume after its job is gone. Small contents are wiped and
  // the mounted volume is kept for the next job (up to `max_pooled`), or
  // unmounted and its image parked on the state dir for the next process;
  // otherwise, or if wiping fails, it is destroyed. Creating a loop-mounted
  // filesystem and freeing its image costs tens of milliseconds here;
  // wiping a few files costs microseconds.
  Result<void> Release(std::unique_ptr<UpperVolume> volume);

  // Unmounts every pooled volume, parking or destroying it (also done by the
  // destructor). No mount or loop device is left behind either way.
  Result<void> DrainPool();
  ~LoopVolumeFactory();

  size_t pooled() const { return pool_.size(); }
  void set_max_pooled(size_t max) { max_pooled_ = max; }

 private:
  explicit LoopVolumeFactory(std::string state_dir) : state_dir_(std::move(state_dir)) {}
  Result<std::string> TemplateFor(uint64_t bytes, uint32_t owner_uid);
  Result<void> MountImage(UpperVolume& volume, int image_fd);
  // Takes a parked image (see Park) by renaming it to `image`.
  bool ClaimParked(uint64_t bytes, uint32_t owner_uid, const std::string& image);
  // Unmounts an emptied volume and keeps its image, renamed
  // "parked-<bytes>-<uid>-loop<N>-...", for the next Acquire of any process
  // (at most 16, each holding at most 16 MiB on the host); else destroys it.
  Result<void> Park(std::unique_ptr<UpperVolume> volume);

  std::string state_dir_;
  std::map<std::pair<uint64_t, uint32_t>, std::string> templates_;
  std::vector<std::unique_ptr<UpperVolume>> pool_;
  size_t max_pooled_ = 16;
  uint64_t next_volume_ = 1;
};

}  // namespace ralph::sandbox
