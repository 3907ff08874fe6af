#include "services/ota/esp.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include "platform/process.h"
#include "platform/unique_fd.h"

namespace ralph::ota {
namespace {

// mtools refuses images whose FAT geometry does not match its expectations
// unless told not to check (https://www.gnu.org/software/mtools/manual/
// mtools.html#Global-variables); the ESPs we make are standard FAT32 anyway.
const std::vector<std::string> kMtoolsEnv = {"MTOOLS_SKIP_CHECK=1", "MTOOLS_NO_VFAT=0"};

ProgramCommand Mtools(std::vector<std::string> argv) {
  return {.argv = std::move(argv), .env = kMtoolsEnv, .package = "mtools"};
}

}  // namespace

std::string SlotImagePath(char slot_letter) {
  return fmt::format("EFI/ralph/{}.efi", slot_letter);
}

Result<std::unique_ptr<MtoolsEsp>> MtoolsEsp::Open(const std::string& device, uint64_t offset) {
  if (::access(device.c_str(), R_OK | W_OK) != 0) {
    return Error::FromErrno(fmt::format("ESP {}", device), errno);
  }
  return std::unique_ptr<MtoolsEsp>(new MtoolsEsp(device, offset));
}

std::string MtoolsEsp::ImageSpec() const {
  return offset_ == 0 ? device_ : fmt::format("{}@@{}", device_, offset_);
}

Result<void> MtoolsEsp::InstallFile(const std::string& local_path, std::string_view esp_path) {
  std::string image = ImageSpec();
  // Make each missing parent directory. mmd fails on an existing one even
  // with "-D s" (mtools 4.0.32), so ask mdir first.
  size_t slash = 0;
  while ((slash = esp_path.find('/', slash)) != std::string_view::npos) {
    std::string dir = fmt::format("::/{}", esp_path.substr(0, slash));
    ProgramExit listed = TRY(RunProgram(Mtools({"mdir", "-i", image, "-b", dir})));
    if (!listed.ok()) {
      TRY_CTX(RunProgramChecked(Mtools({"mmd", "-i", image, dir})),
              fmt::format("creating {} on the ESP", dir));
    }
    ++slash;
  }
  TRY_CTX(RunProgramChecked(Mtools(
              {"mcopy", "-i", image, "-o", "-D", "o", local_path, fmt::format("::/{}", esp_path)})),
          fmt::format("copying {} to the ESP", esp_path));
  // mtools writes through the page cache; flush the medium before anyone
  // relies on the file.
  UniqueFd fd(::open(device_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", device_), errno);
  if (::fsync(fd.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", device_), errno);
  return {};
}

Result<Sha256Digest> MtoolsEsp::Digest(std::string_view esp_path) {
  Sha256 hasher = TRY(Sha256::Create());
  std::string what = fmt::format("reading {} from the ESP", esp_path);
  ProgramCommand command =
      Mtools({"mcopy", "-i", ImageSpec(), fmt::format("::/{}", esp_path), "-"});
  command.on_stdout = [&](std::span<const uint8_t> data) { return hasher.Update(data); };
  ProgramExit run = TRY_CTX(RunProgram(command), what);
  if (!run.ok()) {
    // mcopy: File "::/EFI/ralph/b.efi" not found
    if (run.err.find("not found") != std::string::npos) {
      return Error::Make(ErrorCode::kNotFound, fmt::format("{} is not on the ESP", esp_path));
    }
    return Error::Make(ErrorCode::kIo,
                       fmt::format("{}: mcopy {}: {}", what, run.Describe(), run.err));
  }
  return hasher.Finish();
}

}  // namespace ralph::ota
