#!/bin/sh
# Runs a test binary of a cross-build under qemu-user without the cases
# that qemu-user cannot run (cmake/RalphTest.cmake, tests/qemu_user_skips.cmake),
# saying which and why first. A filter of `*` runs nothing: exit 77, which
# ctest reports as Skipped.
#   qemu_user_test.sh NAME FILTER REASON EMULATOR... BINARY
set -eu
name=$1 filter=$2 reason=$3
shift 3
if [ "$filter" = "*" ]; then
  echo "$name: not run under qemu-user: $reason"
  exit 77
fi
echo "$name: not run under qemu-user: $filter: $reason"
exec "$@" "--gtest_filter=-$filter"
