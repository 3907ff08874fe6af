# Test cases an aarch64 cross-build cannot run under qemu-user, and why
# (cmake/RalphTest.cmake). Each is a limit of qemu-user's emulation, not of
# the code: the same cases run natively on x86_64 and in the aarch64 guest.
# ralph_qemu_user_skip(<test> <gtest filter, or * for all> <reason>)

# glibc's posix_spawn clones with CLONE_VM|CLONE_VFORK and its child writes
# a failed exec's errno into the parent's memory; qemu-user runs that child
# as a plain fork, so the parent never sees the error, nor waits for setsid().
ralph_qemu_user_skip(platform_helpers_test
  "ProcessTest.MissingProgramNamesItsPackage:ProcessTest.StartedProgramRunsInItsOwnSession"
  "qemu-user runs posix_spawn's CLONE_VM|CLONE_VFORK child as a plain fork: its exec error and setsid() stay in the child")
# qemu-user refuses seccomp(2) and prctl(PR_SET_SECCOMP) (a filter would see
# the host's syscalls), so libseccomp probes API level 1 and will not
# compile SCMP_ACT_KILL_PROCESS. The host's tree compiles the aarch64
# programs in the same tests.
ralph_qemu_user_skip(sandbox_plan_test
  "SeccompProgram.CompilesForBothArchitectures:SeccompProgram.DefaultIsTheDefaultPolicyCompiledAtBuildTime:SeccompProgram.RejectsUnknownSyscallsAndArchitectures:SeccompProgram.DenialsComeFirstAndCheckTheirOwnArchitecture:SeccompProgram.RejectsABadDenial:SeccompProgram.KernelDeniesTiocstiEvenWithUpperBitsSet"
  "qemu-user has no seccomp(2): libseccomp sees API level 1 and refuses SCMP_ACT_KILL_PROCESS")
