// The agent image on VAR: installed from a signed agent-image bundle
// (manifest kind "agent-image", bundle/manifest.h), switched atomically, the
// previous image kept for one rollback. Agents are updated this way without
// an OS update (docs/ota.md "Agent-image bundles").
//
// The store is one directory (on the appliance /var/lib/ralph/agent-image):
//
//   state.json                 {"format": 1, "current": RECORD, "previous": RECORD}
//                              replaced whole (temporary file, fsync, rename,
//                              directory fsync): the one switch
//   images/agent-VERSION-SHA256.squashfs
//                              one per installed image, never rewritten
//   .lock                      flock()ed by an install or rollback
//
// An install, in this order:
//
//   lock; sweep what a killed install left (images/*.tmp)
//   open the bundle: the signature against the keyring before the manifest
//     is parsed; the kind (agent-image), product and arch; a pass over the
//     whole payload checking every chunk against the signed manifest
//     -- nothing has been written until here --
//   copy the payload into images/ under a temporary name, every chunk
//     checked again as it is written; fsync; rename to its versioned name;
//     fsync the directory; read it back from VAR against the manifest digest
//   write state.json: current = the new image, previous = the old current
//   remove every image state.json no longer names
//
// A kill at any point leaves state.json naming the old current image (whose
// file is not touched), or the new one whole; the files a killed install
// left are swept by the next one. Nothing is trusted by its name: before an
// image is used (VerifiedCurrentImage) or reused (an install of an image
// already on VAR, a rollback) its bytes are hashed and compared with the
// digest state.json records (which came from a signed manifest).
//
// Library code: returns errors, logs nothing, audits nothing (the caller
// does: ralphd records installs and rollbacks).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "platform/result.h"
#include "platform/sha256.h"
#include "platform/version.h"

namespace ralph::ota {

// One installed image, as state.json records it.
struct AgentImageRecord {
  Version version;
  Sha256Digest sha256{};
  uint64_t size = 0;
  std::string file;       // name under images/: AgentImageFileName(version, sha256)
  std::string signer;     // the bundle signer's subject
  int64_t installed = 0;  // unix seconds
};

struct AgentImageState {
  std::optional<AgentImageRecord> current;
  std::optional<AgentImageRecord> previous;
};

// "agent-1.2.3-<64 hex>.squashfs": the version and the digest, so two
// images never share a name.
std::string AgentImageFileName(const Version& version, const Sha256Digest& sha256);

struct AgentImageStoreOptions {
  std::string dir;  // the store directory (created when missing)
  // What this device is: bundles for another product or arch are refused.
  std::string product = "ralphos";
  std::string arch;  // arch::Name() when empty
  // Test hook: called at named points of an install ("verified",
  // "image-written", "image-renamed", "image-read-back", "state-switched",
  // "pruned") and of a rollback ("rollback-verified", "rollback-switched");
  // fault-injection tests kill the process there.
  std::function<void(std::string_view point)> hook;
  // The wall clock for AgentImageRecord::installed; time() when unset.
  std::function<int64_t()> now;
};

struct AgentImageInstallReport {
  AgentImageRecord installed;
  std::optional<AgentImageRecord> previous;  // what was current before
  // The image was already on VAR (current or previous) with the bundle's
  // digest: it was verified and reused, not copied again.
  bool reused = false;
};

// state.json as it is. kCorrupt naming the field when it does not parse or a
// record is inconsistent (a file name that is not its version's and digest's);
// an empty state when the store holds none yet.
Result<AgentImageState> ReadAgentImageState(const std::string& dir);

// The whole install (above). kBusy when another install or rollback holds
// the lock; kVerificationFailed for a bad signature or a payload that does
// not match its manifest; kRefused for a system bundle, another product or
// another arch; each naming what was wrong, with VAR's images and state
// unchanged.
Result<AgentImageInstallReport> InstallAgentImage(const AgentImageStoreOptions& options,
                                                  const std::string& bundle_path,
                                                  const std::string& keyring_path,
                                                  const std::string& crl_path = "");

// Makes the previous image current and the current one previous, after the
// previous image's bytes matched its recorded digest. kInvalidState when there
// is no previous image; kCorrupt when its file does not match (nothing
// changes then). Returns the new state.
Result<AgentImageState> RollbackAgentImage(const AgentImageStoreOptions& options);

// The path of the current image after its bytes matched the digest state.json
// records. kNotFound when no image is installed; kCorrupt when the file is
// missing or differs.
Result<std::string> VerifiedCurrentImage(const std::string& dir);

// The path of `record`'s file in the store.
std::string AgentImagePath(const std::string& dir, const AgentImageRecord& record);

}  // namespace ralph::ota
