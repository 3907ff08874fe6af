// RalphSandboxClone3OnStack for aarch64 (see clone_trampoline.h).
//
// svc #0 takes the syscall number in x8 and returns in x0; every other
// register is preserved. The kernel starts the child with the parent's
// registers (pt_regs copied in copy_thread), x0 = 0 and sp = args->stack +
// args->stack_size (clone3_stack_valid): `entry` and `arg` are still in x2
// and x3 there. The stack top is page aligned, so sp is 16-byte aligned as
// the AAPCS64 requires. The frame record (x29) and link register (x30) are
// zeroed so that unwinders stop at the child's first frame.
#include <sys/syscall.h>

#include "clone_trampoline.h"

static_assert(SYS_clone3 == 435 && SYS_exit_group == 94, "aarch64 (asm-generic) syscall numbers");

asm(R"(
  .pushsection .text
  .globl RalphSandboxClone3OnStack
  .type RalphSandboxClone3OnStack, %function
  .p2align 2
RalphSandboxClone3OnStack:
  .cfi_startproc
  hint #34
  mov x8, #435
  svc #0
  cbz x0, 1f
  ret
1:
  .cfi_undefined x30
  mov x29, xzr
  mov x30, xzr
  mov x0, x3
  blr x2
  mov x0, #127
  mov x8, #94
  svc #0
  brk #0x3e8
  .cfi_endproc
  .size RalphSandboxClone3OnStack, .-RalphSandboxClone3OnStack
  .popsection
)");
