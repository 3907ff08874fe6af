// In-memory BlockDeviceInterface for tests of the OTA writer, recovery and
// the image builder, with injectable faults:
//   - EIO (or any errno) for reads/writes touching a given offset; a write
//     that crosses it lands the bytes before it (a torn write);
//   - a short write: the next write lands only its first N bytes and fails;
//   - ENOSPC past a capacity below size() (a device smaller than claimed);
//   - a failing Flush();
//   - silent corruption of a byte (what verification must catch);
//   - a power cut: everything written since the last successful Flush()
//     is lost.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "drivers/block_device.h"

namespace ralph::testing {

class FakeBlockDevice final : public BlockDeviceInterface {
 public:
  // A zero-filled device of `size` bytes.
  explicit FakeBlockDevice(uint64_t size) : data_(size, 0), durable_(size, 0) {}

  uint64_t size() const override { return data_.size(); }
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Result<void> Flush() override;
  Result<void> Discard(uint64_t offset, uint64_t length) override;

  // ---- fault injection ----
  void FailWritesAt(uint64_t offset, int err = EIO) { write_fault_ = Fault{offset, err}; }
  void FailReadsAt(uint64_t offset, int err = EIO) { read_fault_ = Fault{offset, err}; }
  // The next write lands only `bytes` bytes, then fails with EIO.
  void ShortNextWrite(uint64_t bytes) { short_write_ = bytes; }
  // Writes reaching past `bytes` land what fits and fail with ENOSPC.
  void SetCapacity(uint64_t bytes) { capacity_ = bytes; }
  void FailFlush(int err = EIO) { flush_errno_ = err; }
  void SetDiscardSupported(bool supported) { discard_supported_ = supported; }
  // Flips every bit of one byte, in both the volatile and durable content.
  void CorruptByte(uint64_t offset);
  // Loses everything not flushed.
  void PowerCut() { data_ = durable_; }
  void ClearFaults();

  // ---- inspection ----
  const std::vector<uint8_t>& data() const { return data_; }
  const std::vector<uint8_t>& durable_data() const { return durable_; }
  int writes() const { return writes_; }
  int flushes() const { return flushes_; }
  uint64_t bytes_written() const { return bytes_written_; }
  int discards() const { return discards_; }

 private:
  struct Fault {
    uint64_t offset;
    int err;
  };
  Result<void> CheckRange(uint64_t offset, uint64_t length, const char* what) const;

  std::vector<uint8_t> data_;
  std::vector<uint8_t> durable_;
  std::optional<Fault> write_fault_;
  std::optional<Fault> read_fault_;
  std::optional<uint64_t> short_write_;
  std::optional<uint64_t> capacity_;
  int flush_errno_ = 0;
  bool discard_supported_ = true;
  int writes_ = 0;
  int flushes_ = 0;
  uint64_t bytes_written_ = 0;
  int discards_ = 0;
};

}  // namespace ralph::testing
