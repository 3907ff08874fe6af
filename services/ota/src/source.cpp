#include "services/ota/source.h"

#include <fmt/format.h>

namespace ralph::ota {

Result<std::unique_ptr<ByteSourceInterface>> OpenSource(const std::string& file_or_url,
                                                        const HttpsOptions& options) {
  if (file_or_url.starts_with("https://")) {
    return std::unique_ptr<ByteSourceInterface>(TRY(HttpsSource::Open(file_or_url, options)));
  }
  if (file_or_url.find("://") != std::string::npos) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("{}: only local files and https:// URLs are accepted", file_or_url));
  }
  return std::unique_ptr<ByteSourceInterface>(TRY(FileSource::Open(file_or_url)));
}

}  // namespace ralph::ota
