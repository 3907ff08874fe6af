// Partitions by PARTLABEL in early boot, from the kernel's own view
// (/sys/class/block/<dev>/uevent carries PARTNAME= for GPT partitions), so
// the initrd needs neither udev nor /dev/disk/by-partlabel.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::init {

// Key/value pairs of one uevent file ("DEVNAME=vda2\nPARTNAME=SYSTEM_A\n").
std::map<std::string, std::string> ParseUevent(std::string_view text);

// PARTLABEL -> "/dev/<devname>" for every partition under `sysfs_block_dir`
// ("/sys/class/block"). A label seen on two devices keeps the first in name
// order. kIo when the directory cannot be read.
Result<std::map<std::string, std::string>> FindPartitionsByLabel(const std::string& sysfs_block_dir);

}  // namespace ralph::init
