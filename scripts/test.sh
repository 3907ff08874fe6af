#!/usr/bin/env bash
# Sets up the machine and runs the whole test suite: format check, the
# release build with unit + integration + e2e tests, and an ASan+UBSan build
# of the unit and integration tests. Exit status is ctest's.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

bash scripts/setup.sh

jobs=$(nproc)

# ccache (scripts/setup.sh installs it): a rerun, or a fresh clone on the
# same machine, compiles only what changed since an earlier run.
# CCACHE_BASEDIR makes paths under the checkout relative, so clones at other
# paths hit the same entries.
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_BASEDIR="$top" CCACHE_NOHASHDIR=1
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

echo "== format check (clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -1))"
mapfile -t sources < <(git ls-files '*.h' '*.cpp' 2>/dev/null || true)
if ((${#sources[@]})); then
  clang-format --dry-run --Werror "${sources[@]}"
fi

echo "== build (release)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
cmake --build build -j "$jobs"

echo "== build (asan+ubsan)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DRALPH_SANITIZE=ON "${launcher[@]}" >/dev/null
cmake --build build-asan -j "$jobs"

status=0
echo "== tests: unit + integration + e2e (release)"
(cd build && ctest --output-on-failure -j "$jobs" --timeout 900) || status=1
echo "== tests: unit + integration (asan+ubsan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j "$jobs" -L 'unit|integration' --timeout 900) || status=1
echo "== fuzz: bundle manifest parser (libFuzzer, 30 s)"
cmake -S tests/ota/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
cmake --build build-fuzz -j "$jobs"
mkdir -p build-fuzz/corpus
build-fuzz/manifest_fuzzer -max_total_time=30 build-fuzz/corpus tests/ota/fuzz/corpus || status=1
exit $status
