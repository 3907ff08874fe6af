// The writable upper layer of a job's rootfs, with a real disk quota: each
// job gets its own ext4 filesystem of exactly Limits::disk_bytes, in a sparse
// image file on the state directory (VAR on the appliance), loop-mounted.
// A full disk gives the job ENOSPC and nothing else; deleting the image frees
// it. (ext4/XFS project quotas would avoid the loop device but need
// CONFIG_QUOTA and CONFIG_QFMT_V2; the development kernel lacks the latter.)
//
// Volumes are shared by every process using the same state directory:
// <state>/volumes/vol-<bytes>-<uid>-<pid>-<n>.img, mounted (when it is) on
// the directory of the same name without ".img". A process owns a volume
// while it holds an exclusive flock(2) on the image, so a killed owner's
// volume is free again the moment the kernel closes its files; whoever
// takes it next wipes what the dead job left. An unlocked volume is "warm"
// (still mounted: taking it costs a lock and a wipe) or "cold" (unmounted,
// formatted, no loop device: taking it costs a loop attach and a mount).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::sandbox {

// A mounted volume this process holds (locked). Destroy() (or the
// destructor) deletes the image and unmounts it, which detaches the loop
// device (autoclear).
class UpperVolume {
 public:
  ~UpperVolume();
  UpperVolume(const UpperVolume&) = delete;
  UpperVolume& operator=(const UpperVolume&) = delete;

  const std::string& mount_point() const { return mount_point_; }
  Result<void> Destroy();

 private:
  friend class LoopVolumeFactory;
  UpperVolume(std::string image, std::string mount_point, uint64_t bytes, uint32_t owner_uid,
              UniqueFd lock)
      : image_(std::move(image)),
        mount_point_(std::move(mount_point)),
        bytes_(bytes),
        owner_uid_(owner_uid),
        lock_(std::move(lock)) {}
  // Lets go of the volume as it is (mounted or not) for any process to take.
  void Unlock();
  std::string image_;
  std::string mount_point_;
  uint64_t bytes_;
  uint32_t owner_uid_;
  UniqueFd lock_;  // the image, flock(LOCK_EX) held
  bool mounted_ = false;
};

// Mounts a squashfs or erofs image read-only on `mount_point` through a
// read-only, autoclear loop device (the filesystem type is tried in that
// order). Undo with umount2(mount_point, MNT_DETACH).
Result<void> MountImageReadOnly(const std::string& image, const std::string& mount_point);

struct VolumeOptions {
  // Emptied volumes kept mounted and locked by this process for its next
  // jobs.
  size_t max_pooled = 16;
  // Emptied volumes left mounted (warm, unlocked) on the state directory
  // when this process lets go of them (pool full, DrainPool, exit), counted
  // over all processes: a launcher that runs one job and exits sets this so
  // that the next launcher skips the loop attach, mount and unmount. 0: a
  // released volume is unmounted (cold).
  size_t max_shared_mounted = 0;
  // Open() sweeps volumes/ (see Sweep()). A launcher turns this off and
  // sweeps while its job runs instead.
  bool sweep_at_open = true;
  // A volume let go warm (max_shared_mounted) is left as its job left it,
  // unlocked, for the next process to empty: Acquire() takes clean warm
  // volumes first and wipes any other before handing it out, Sweep() wipes
  // the ones nobody holds. A launcher that sweeps while its job runs then
  // empties the previous run's volume off its own critical path, instead
  // of its own at its end. Going cold or into the pool, a volume is always
  // wiped first.
  bool defer_wipe = false;
};

// What Sweep() found of owners that are gone (and of volumes let go unwiped).
struct VolumeSweep {
  size_t wiped = 0;      // unlocked volumes holding a dead job's files, emptied
  size_t destroyed = 0;  // unusable ones (or half-made images), deleted and unmounted
  size_t unmounted = 0;  // mounts of an earlier release's per-process naming, pid gone
};

class LoopVolumeFactory {
 public:
  // `state_dir` holds the formatted template images (one per size), made on
  // first use with mkfs.ext4 (e2fsprogs), and volumes/. Sweeps volumes/
  // first unless options.sweep_at_open is off.
  static Result<std::unique_ptr<LoopVolumeFactory>> Open(const std::string& state_dir,
                                                         VolumeOptions options = {});

  // A mounted, empty volume of `bytes` whose root is owned by
  // `owner_uid`:`owner_uid`: one from this process's pool, else a warm one
  // of the state dir (an empty one first; one a job's files are still in
  // is wiped here), else a cold one (mounted here), else a new one (a copy
  // of the template's few used blocks; the rest stays sparse), mounted
  // nosuid,nodev. Whatever it is, it is wiped before it is handed out.
  Result<std::unique_ptr<UpperVolume>> Acquire(uint64_t bytes, uint32_t owner_uid);

  // Returns a volume after its job is gone. Small contents (everything but
  // lost+found and the empty directory `root`) are wiped and the volume is
  // pooled, or let go warm or cold (see VolumeOptions); otherwise, or if
  // wiping fails, it is destroyed. Creating a loop-mounted filesystem and
  // freeing its image costs tens of milliseconds here; wiping a few files
  // costs microseconds.
  Result<void> Release(std::unique_ptr<UpperVolume> volume);

  // Lets go of every pooled volume (warm or cold, see VolumeOptions); also
  // done by the destructor.
  Result<void> DrainPool();

  // Empties or removes what no process holds in volumes/ and should not be
  // there as it is: a killed process's volume mounted and full of its job's
  // files, one let go unwiped (defer_wipe), a half-made image. Adds to
  // sweep(). Every entry is tried; the failures (what could not be removed)
  // come back as one error naming the first and their count.
  Result<void> Sweep();
  ~LoopVolumeFactory();

  size_t pooled() const { return pool_.size(); }
  void set_max_pooled(size_t max) { options_.max_pooled = max; }
  const VolumeSweep& sweep() const { return sweep_; }

 private:
  LoopVolumeFactory(std::string state_dir, VolumeOptions options)
      : state_dir_(std::move(state_dir)), options_(options) {}
  Result<std::string> TemplateFor(uint64_t bytes, uint32_t owner_uid);
  Result<void> MountImage(UpperVolume& volume);
  // Locks the unlocked volume `name` (an image file name in volumes/).
  std::unique_ptr<UpperVolume> TryLock(const std::string& name, uint64_t bytes, uint32_t owner_uid);
  // Unmounts (cold) or keeps mounted (warm) and unlocks; or destroys.
  // `wiped`: its job's files are gone already; else they are left on a warm
  // volume (defer_wipe) and wiped before anything else.
  Result<void> LetGo(std::unique_ptr<UpperVolume> volume, bool wiped);

  std::string state_dir_;
  std::string volumes_dir_;
  VolumeOptions options_;
  std::map<std::pair<uint64_t, uint32_t>, std::string> templates_;
  std::vector<std::unique_ptr<UpperVolume>> pool_;
  uint64_t next_volume_ = 1;
  VolumeSweep sweep_;
};

// Unmounts every volume of `state_dir` (a LoopVolumeFactory's) that no
// process holds, keeping the images (cold) emptied of any job's files: what
// `ralph-sandbox drain` does before a state directory is deleted. Returns
// how many were unmounted.
Result<size_t> UnmountIdleVolumes(const std::string& state_dir);

}  // namespace ralph::sandbox
