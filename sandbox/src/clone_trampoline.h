// clone3 onto a new stack (private to the spawner, sandbox/src/spawner.cpp).
// One implementation per architecture, chosen by CMake:
// arch/<arch>/clone_trampoline.cpp.
#pragma once

#include <linux/sched.h>

#include <cstddef>

extern "C" {

// Calls clone3(args, size). In the parent it returns what the kernel
// returned: the child's pid (in the caller's pid namespace), or -errno (errno
// is not touched). The child starts on the stack given in args->stack/
// stack_size, with no frame of the caller's on it, calls entry(arg) there and
// exit_group(127)s if entry ever returns; it never returns into the caller.
//
// Why a trampoline: a raw syscall(SYS_clone3, ...) with a new stack cannot
// work (the child would return from syscall() into frames that are not on its
// stack), and glibc 2.36 exports no clone3 wrapper.
long RalphSandboxClone3OnStack(clone_args* args, size_t size, void (*entry)(void*), void* arg);

}  // extern "C"
