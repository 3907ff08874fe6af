// Where the guest agent puts a job's disks inside the guest: the host
// writes the guest's view of a SandboxSpec with these.
#pragma once

namespace ralph::sandbox::vm {

// /dev/vda, the job's base image (squashfs), mounted read-only.
inline constexpr const char* kGuestBasePath = "/run/ralph/base";
// /dev/vdb, the ext4 the host made for the job: the sandbox's state dir.
inline constexpr const char* kGuestStatePath = "/run/ralph/state";

}  // namespace ralph::sandbox::vm
