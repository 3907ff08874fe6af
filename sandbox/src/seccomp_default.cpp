// SeccompProgram::Default: the programs tools/seccomp-gen compiled at build
// time (kept apart from seccomp.cpp, which the generator itself links).
#include "seccomp_default.h"

#include <seccomp.h>

#include <fmt/format.h>

#include "sandbox/seccomp.h"

namespace ralph::sandbox {

Result<SeccompProgram> SeccompProgram::Default(uint32_t audit_arch) {
  if (audit_arch == 0) audit_arch = seccomp_arch_native();
  for (size_t i = 0; i < generated::kDefaultSeccompProgramCount; ++i) {
    const generated::PrecompiledSeccomp& program = generated::kDefaultSeccompPrograms[i];
    if (program.audit_arch != audit_arch) continue;
    return SeccompProgram(
        std::vector<sock_filter>(program.filter, program.filter + program.length),
        std::vector<std::string>(program.skipped, program.skipped + program.skipped_count));
  }
  return Error::Make(ErrorCode::kUnsupported,
                     fmt::format("seccomp: no default program for audit arch {:#x}", audit_arch));
}

}  // namespace ralph::sandbox
