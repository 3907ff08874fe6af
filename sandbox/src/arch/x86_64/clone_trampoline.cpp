// RalphSandboxClone3OnStack for x86_64 (see clone_trampoline.h).
//
// The syscall instruction clobbers only rax (result), rcx and r11; the kernel
// starts the child with the parent's registers (pt_regs copied in
// copy_thread), rax = 0 and rsp = args->stack + args->stack_size
// (clone3_stack_valid). So `entry` stays in rdx (clone3's third argument
// register, unused) and `arg` is moved out of rcx into r8 before the call.
// The stack top is page aligned, so rsp is 16-byte aligned at the `call`
// as the SysV ABI requires.
#include <sys/syscall.h>

#include "clone_trampoline.h"

static_assert(SYS_clone3 == 435 && SYS_exit_group == 231, "x86_64 syscall numbers");

asm(R"(
  .pushsection .text
  .globl RalphSandboxClone3OnStack
  .type RalphSandboxClone3OnStack, @function
  .p2align 4
RalphSandboxClone3OnStack:
  .cfi_startproc
  endbr64
  movq %rcx, %r8
  movl $435, %eax
  syscall
  testq %rax, %rax
  jz 1f
  ret
1:
  # The child: nothing to unwind into (no return address above this frame).
  .cfi_undefined rip
  xorl %ebp, %ebp
  movq %r8, %rdi
  call *%rdx
  movl $127, %edi
  movl $231, %eax
  syscall
  ud2
  .cfi_endproc
  .size RalphSandboxClone3OnStack, .-RalphSandboxClone3OnStack
  .popsection
)");
