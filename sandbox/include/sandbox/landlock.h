// Landlock (Documentation/userspace-api/landlock.rst): after pivot_root the
// job is restricted to the filesystem beneath its own root, so no file
// descriptor or path that leads outside it (a leaked host fd, a magic link)
// can be used; from ABI 6 it also may not signal or reach abstract unix
// sockets outside its domain.
#pragma once

#include <cstdint>

namespace ralph::sandbox {

// The kernel's Landlock ABI version (landlock_create_ruleset with
// LANDLOCK_CREATE_RULESET_VERSION), or 0 when Landlock is absent/disabled.
int LandlockAbiVersion();

// The filesystem access rights ABI `abi` knows (LANDLOCK_ACCESS_FS_*).
uint64_t LandlockHandledAccessFs(int abi);
// The scopes ABI `abi` knows (LANDLOCK_SCOPE_*; 0 before ABI 6).
uint64_t LandlockScopes(int abi);

// In the job's child, after pivot_root and no_new_privs: restricts the
// calling process to everything beneath "/" (its own root). Returns 0 or an
// errno. Async-signal-safe (raw syscalls only). abi 0 does nothing.
int ApplyLandlockInChild(int abi);

}  // namespace ralph::sandbox
