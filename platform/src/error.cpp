#include "platform/error.h"

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace ralph {

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInternal: return "internal";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kNotFound: return "not-found";
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kPermissionDenied: return "permission-denied";
    case ErrorCode::kNoSpace: return "no-space";
    case ErrorCode::kReadOnly: return "read-only";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kBusy: return "busy";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kVerificationFailed: return "verification-failed";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kAlreadyExists: return "already-exists";
    case ErrorCode::kInvalidState: return "invalid-state";
    case ErrorCode::kRefused: return "refused";
    case ErrorCode::kNetwork: return "network";
  }
  return "unknown";
}

ErrorCode ErrorCodeFromErrno(int err) {
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO: return ErrorCode::kNotFound;
    case EINVAL:
    case E2BIG:
    case ENAMETOOLONG: return ErrorCode::kInvalidArgument;
    case EACCES:
    case EPERM: return ErrorCode::kPermissionDenied;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return ErrorCode::kNoSpace;
    case EROFS: return ErrorCode::kReadOnly;
    case ENOSYS:
    case EOPNOTSUPP:
    case EAFNOSUPPORT:
    case EPROTONOSUPPORT: return ErrorCode::kUnsupported;
    case EBUSY:
    case EAGAIN: return ErrorCode::kBusy;
    case ETIMEDOUT: return ErrorCode::kTimeout;
    case ECANCELED: return ErrorCode::kCancelled;
    case EEXIST: return ErrorCode::kAlreadyExists;
    case ECONNREFUSED:
    case ECONNRESET:
    case ENETUNREACH:
    case EHOSTUNREACH:
    case EPIPE: return ErrorCode::kNetwork;
    default: return ErrorCode::kIo;
  }
}

Error Error::Make(ErrorCode code, std::string message) {
  return Error(code, 0, std::move(message));
}

Error Error::FromErrno(std::string_view what, int err) {
  return FromErrno(ErrorCodeFromErrno(err), what, err);
}

Error Error::FromErrno(ErrorCode code, std::string_view what, int err) {
  // strerrordesc_np is async-signal-safe and thread-safe, unlike strerror.
  const char* description = strerrordesc_np(err);
  return Error(code, err, fmt::format("{}: {}", what, description ? description : "unknown error"));
}

Error Error::WithContext(std::string_view context) && {
  message_ = fmt::format("{}: {}", context, message_);
  return std::move(*this);
}

Error Error::WithContext(std::string_view context) const& {
  Error copy = *this;
  return std::move(copy).WithContext(context);
}

std::string Error::ToString() const {
  return fmt::format("{} [{}]", message_, ErrorCodeName(code_));
}

}  // namespace ralph
