// UniqueFd: owns one file descriptor, so none leaks on an error path.
// Move-only; no implicit int conversion; release() must be used; reset()
// preserves errno so it can run on error paths between a failed call and the
// Error::FromErrno that reports it.
#pragma once

#include <unistd.h>
#include <cerrno>

namespace ralph {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }

  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  [[nodiscard]] int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

  void reset(int fd = -1) {
    if (fd_ >= 0) {
      int saved_errno = errno;
      // close() must not be retried on EINTR on Linux: the fd is gone either way.
      ::close(fd_);
      errno = saved_errno;
    }
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace ralph
