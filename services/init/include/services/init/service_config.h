// /etc/ralph/services.conf: the services ralph-init runs, one per line.
//
//   # comment
//   <name> exec=<absolute path> [args=<a,b,c>] [after=<name1,name2>]
//          [type=simple|oneshot] [required=yes|no]
//
// `after` only orders start-up (like systemd's After=): a service starts once
// every service it names has been started (a oneshot: has finished), whether
// or not that succeeded, so a broken dependency never hides the health gate.
// `required` services must be running for the health gate to pass.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::init {

inline constexpr const char* kServicesConfPath = "/etc/ralph/services.conf";

struct ServiceSpec {
  std::string name;
  std::string exec;
  std::vector<std::string> args;
  std::vector<std::string> after;
  bool oneshot = false;
  bool required = true;
  friend bool operator==(const ServiceSpec&, const ServiceSpec&) = default;
};

// kInvalidArgument naming the line and the problem (unknown key, relative
// exec, duplicate name, unknown `after` name, a dependency cycle).
Result<std::vector<ServiceSpec>> ParseServicesConf(std::string_view text);

// Names in an order that respects every `after`; ties keep file order.
// kInvalidArgument on a cycle or an unknown name.
Result<std::vector<std::string>> StartOrder(const std::vector<ServiceSpec>& services);

// Delay before restarting a service that failed `consecutive_failures` times
// in a row: 1 s, 2 s, 4 s, ... capped at 30 s.
std::chrono::milliseconds RestartDelay(int consecutive_failures);

// A service that ran at least this long before exiting is considered to
// have started fine: its failure count resets.
inline constexpr std::chrono::seconds kStableRunTime{10};

}  // namespace ralph::init
