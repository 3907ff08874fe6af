#include "instance_claim.h"

#include <net/if.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

namespace ralph::sandbox {

Result<std::optional<UniqueFd>> TryClaimInstance(const std::string& ifname_prefix, unsigned n) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("claiming a network service instance: socket", errno);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::string name = fmt::format("ralph-sandbox-net.{}.{}", ifname_prefix, n);
  // Abstract name: a leading NUL, not NUL-terminated (length-delimited).
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  // reinterpret_cast: bind() takes the generic sockaddr.
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) {
    return std::optional<UniqueFd>(std::move(fd));
  }
  if (errno != EADDRINUSE) {
    return Error::FromErrno(fmt::format("claiming network service instance {}", n), errno);
  }
  return std::optional<UniqueFd>();
}

Result<std::pair<UniqueFd, unsigned>> ClaimInstance(const std::string& ifname_prefix,
                                                    unsigned max_instances) {
  for (unsigned n = 0; n < max_instances; ++n) {
    auto claim = TRY(TryClaimInstance(ifname_prefix, n));
    if (claim) return std::make_pair(std::move(*claim), n);
  }
  return Error::Make(ErrorCode::kBusy,
                     fmt::format("all {} network service instances for ifname_prefix \"{}\" are "
                                 "in use in this network namespace",
                                 max_instances, ifname_prefix));
}

std::vector<std::string> InstanceLinks(const std::string& prefix) {
  std::vector<std::string> names;
  struct if_nameindex* list = if_nameindex();
  if (!list) return names;
  for (struct if_nameindex* entry = list; entry->if_index != 0; ++entry) {
    std::string_view name = entry->if_name;
    if (!name.starts_with(prefix) || name.size() == prefix.size()) continue;
    std::string_view rest = name.substr(prefix.size());
    if (std::all_of(rest.begin(), rest.end(), [](char c) { return std::isdigit(c) != 0; })) {
      names.emplace_back(name);
    }
  }
  if_freenameindex(list);
  return names;
}

}  // namespace ralph::sandbox
