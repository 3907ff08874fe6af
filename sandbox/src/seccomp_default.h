// The default seccomp programs compiled when the build ran (private).
//
// tools/seccomp-gen compiles DefaultSeccompPolicy() with libseccomp for every
// supported architecture and writes them as these tables (Firecracker
// compiles its seccomp policies at build time the same way), so a service or
// a launcher loads the filter without compiling it: SeccompProgram::Default.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <cstdint>

namespace ralph::sandbox::generated {

struct PrecompiledSeccomp {
  uint32_t audit_arch;
  const sock_filter* filter;
  size_t length;
  // Policy syscalls this architecture lacks (SeccompProgram::skipped()).
  const char* const* skipped;
  size_t skipped_count;
};

extern const PrecompiledSeccomp kDefaultSeccompPrograms[];
extern const size_t kDefaultSeccompProgramCount;

}  // namespace ralph::sandbox::generated
