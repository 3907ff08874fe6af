// Scoped handles for libblkid and libfdisk: every handle freed on every
// error path without a goto ladder. Private to
// drivers/: no other layer sees these libraries' headers.
#pragma once

#include <blkid.h>
#include <libfdisk.h>

#include <memory>

namespace ralph::handles {

struct BlkidProbeDeleter {
  void operator()(blkid_probe probe) const { blkid_free_probe(probe); }
};
using BlkidProbe = std::unique_ptr<std::remove_pointer_t<blkid_probe>, BlkidProbeDeleter>;

struct BlkidCacheDeleter {
  void operator()(blkid_cache cache) const { blkid_put_cache(cache); }
};
using BlkidCache = std::unique_ptr<std::remove_pointer_t<blkid_cache>, BlkidCacheDeleter>;

struct BlkidDevIterateDeleter {
  void operator()(blkid_dev_iterate iterate) const { blkid_dev_iterate_end(iterate); }
};
using BlkidDevIterate =
    std::unique_ptr<std::remove_pointer_t<blkid_dev_iterate>, BlkidDevIterateDeleter>;

struct FdiskContextDeleter {
  void operator()(fdisk_context* context) const { fdisk_unref_context(context); }
};
using FdiskContext = std::unique_ptr<fdisk_context, FdiskContextDeleter>;

struct FdiskPartitionDeleter {
  void operator()(fdisk_partition* partition) const { fdisk_unref_partition(partition); }
};
using FdiskPartition = std::unique_ptr<fdisk_partition, FdiskPartitionDeleter>;

struct FdiskParttypeDeleter {
  void operator()(fdisk_parttype* type) const { fdisk_unref_parttype(type); }
};
using FdiskParttype = std::unique_ptr<fdisk_parttype, FdiskParttypeDeleter>;

}  // namespace ralph::handles
