// Fuzzes CheckPolicy (tinyxml2 plus the position walk and every check): an
// input is a policy or a list of issues, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "services/ralphd/policy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view document(reinterpret_cast<const char*>(data), size);
  ralph::ralphd::PolicyCheck check = ralph::ralphd::CheckPolicy(document);
  for (const ralph::ralphd::PolicyIssue& issue : check.issues) (void)issue.ToString();
  if (check.policy) {
    for (const auto& [name, profile] : check.policy->profiles) {
      (void)ralph::ralphd::MakeJobSpec(profile, {.argv = {"true"}}, {});
    }
  }
  return 0;
}
