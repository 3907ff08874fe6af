// Which service instance of an ifname prefix this process is in a network
// namespace: an abstract unix socket "ralph-sandbox-net.<prefix>.<n>" bound
// for as long as the service lives. Binding an abstract name succeeds for
// exactly one socket per netns, and the kernel frees the name when the
// socket closes, also when its process dies (unix(7), "Abstract sockets").
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::sandbox {

// Claims instance `n` of `ifname_prefix` in the calling thread's netns, or
// nullopt when a live socket holds it.
Result<std::optional<UniqueFd>> TryClaimInstance(const std::string& ifname_prefix, unsigned n);

// Claims the first free instance number below `max_instances`; kBusy when
// all are held.
Result<std::pair<UniqueFd, unsigned>> ClaimInstance(const std::string& ifname_prefix,
                                                    unsigned max_instances);

// Names "<prefix><digits>" of links in the calling thread's netns: the host
// veths of the instance whose interface prefix is `prefix`.
std::vector<std::string> InstanceLinks(const std::string& prefix);

}  // namespace ralph::sandbox
