// Error: a stable code plus context.
//
// An Error carries an ErrorCode with a pinned number (safe to persist, log and
// send over the API), the failing syscall and errno when there was one, and a
// message that gains context at each layer on the way up:
//   "writing slot B: verifying chunk 17: digest mismatch".
// Libraries return Errors and never log; binaries log each error once.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ralph {

// Numbers are pinned: never renumber, only append.
enum class ErrorCode : uint16_t {
  kInternal = 1,             // a bug: an invariant did not hold
  kIo = 2,                   // a read/write/syscall failed
  kNotFound = 3,             // a file, variable, partition, slot... is absent
  kInvalidArgument = 4,      // the caller's input is malformed
  kCorrupt = 5,              // stored data failed its magic/CRC/parse check
  kPermissionDenied = 6,     // EACCES/EPERM
  kNoSpace = 7,              // ENOSPC, or a payload larger than its target
  kReadOnly = 8,             // EROFS, or an immutable variable/file
  kUnsupported = 9,          // the kernel/firmware/arch lacks a feature
  kBusy = 10,                // another operation holds the resource
  kTimeout = 11,             // a deadline passed
  kVerificationFailed = 12,  // a digest or signature did not match
  kCancelled = 13,           // the caller asked to stop
  kAlreadyExists = 14,       // EEXIST, or a duplicate entry
  kInvalidState = 15,        // the operation is not allowed in the current state
  kRefused = 16,             // policy refused it (downgrade, not committed, ...)
  kNetwork = 17,             // a connection failed or dropped
};

// "io", "not-found", ...: the stable spelling used in JSON and logs.
std::string_view ErrorCodeName(ErrorCode code);

class Error {
 public:
  // An error with no syscall behind it.
  static Error Make(ErrorCode code, std::string message);
  // An error from a failed syscall or libc call: `what` names the call and its
  // object ("open /dev/vda2"), `err` is the errno captured at the call site.
  // The code is derived from errno (ENOENT -> kNotFound, ENOSPC -> kNoSpace...).
  static Error FromErrno(std::string_view what, int err);
  // Same, with an explicit code instead of the derived one.
  static Error FromErrno(ErrorCode code, std::string_view what, int err);

  ErrorCode code() const { return code_; }
  // 0 when the error did not come from a syscall.
  int sys_errno() const { return errno_; }
  // The message with all context, without the code name.
  const std::string& message() const { return message_; }

  // Prepends "context: " to the message; returns the error for chaining.
  Error WithContext(std::string_view context) &&;
  Error WithContext(std::string_view context) const&;

  // "message [code-name]", for logs and the CLI.
  std::string ToString() const;

 private:
  Error(ErrorCode code, int err, std::string message)
      : code_(code), errno_(err), message_(std::move(message)) {}

  ErrorCode code_;
  int errno_;
  std::string message_;
};

// Maps an errno value to the closest ErrorCode.
ErrorCode ErrorCodeFromErrno(int err);

}  // namespace ralph
