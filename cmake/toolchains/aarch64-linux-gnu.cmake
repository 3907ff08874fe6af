# Cross-build for aarch64 on a Debian x86_64 host (docs/DEVELOPING.md
# "aarch64"): Debian's g++-aarch64-linux-gnu, and the arm64 -dev packages
# installed beside the host's through dpkg multiarch (scripts/setup.sh), so
# headers come from /usr/include{,/aarch64-linux-gnu} and libraries from
# /usr/lib/aarch64-linux-gnu, where the cross compiler looks by default.
#   cmake -S . -B build-aarch64 -G Ninja \
#     -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# find_library/find_package look in /usr/lib/aarch64-linux-gnu (and its
# cmake/ package configs), never in the host's x86_64 directories.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Debian's cross pkg-config wrapper reads only the arm64 .pc files.
find_program(PKG_CONFIG_EXECUTABLE aarch64-linux-gnu-pkg-config REQUIRED)
# Programs the build runs (ralph-seccomp-gen) and the tests ctest runs are
# arm64 executables: qemu-user runs them (package qemu-user-static). With
# binfmt_misc registered (scripts/setup.sh) they also run directly, which the
# tests that exec other test binaries rely on.
find_program(RALPH_QEMU_AARCH64 qemu-aarch64-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${RALPH_QEMU_AARCH64})
