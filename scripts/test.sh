#!/usr/bin/env bash
# Sets up the machine and runs the whole test suite: format check, the
# release build with unit + integration + e2e tests, the aarch64 cross-build
# with its unit and integration tests under qemu-user, and an ASan+UBSan
# build of the unit and integration tests. Exit status is ctest's.
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

# RALPH_TEST_AARCH64=0 leaves the aarch64 stages out (said in the summary).
aarch64=${RALPH_TEST_AARCH64:-1}
if ((aarch64)); then
  echo "== build (aarch64: cross-compiled, docs/DEVELOPING.md \"aarch64\")"
  started=$SECONDS
  cmake -S . -B build-aarch64 -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake "${launcher[@]}" >/dev/null
  cmake --build build-aarch64 -j "$jobs"
  echo "aarch64 build: $((SECONDS - started)) s"
fi

echo "== build (asan+ubsan)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DRALPH_SANITIZE=ON "${launcher[@]}" >/dev/null
cmake --build build-asan -j "$jobs"

status=0
failed=()
retried=()
# Runs ctest in a build dir. A test that fails is run once more: one that
# then passes does not fail the run but is listed in `retried` (a flaky
# test, to be fixed, not hidden); one that fails twice is listed in
# `failed`. Both lists end the output, which is all a CI log may show.
# Extra arguments go to ctest; `parallel` (default $jobs) is its parallel level.
run_ctest() {
  local dir=$1 what=$2
  shift 2
  local out="$dir/ctest-output.log"
  set +e
  (cd "$dir" && ctest --output-on-failure -j "${parallel:-$jobs}" --timeout 900 --repeat until-pass:2 "$@") 2>&1 |
    tee "$out"
  local rc=${PIPESTATUS[0]}
  set -e
  local list="$dir/Testing/Temporary/LastTestsFailed.log" names=()
  if ((rc != 0)); then
    status=1
    if [[ -s $list ]]; then
      while IFS= read -r line; do names+=("${line#*:}"); done <"$list"
      for name in "${names[@]}"; do failed+=("$what: $name"); done
    else
      failed+=("$what: ctest failed without a list of failed tests")
    fi
  fi
  local name
  while IFS= read -r name; do
    [[ " ${names[*]} " == *" $name "* ]] || retried+=("$what: $name")
  done < <(grep -E 'Test +#[0-9]+: [^ ]+ \.*\*\*\*' "$out" | grep -v '\*\*\*Skipped' |
    grep -oE 'Test +#[0-9]+: [^ ]+' | awk '{print $3}' | sort -u)
}

echo "== tests: unit + integration + e2e (release)"
# One `cpus` slot per CPU for the CPU-bound tests (ralph_cpu_bound in
# cmake/RalphTest.cmake) and two places more for the ones that mostly wait
# on downloads (the agent image's builds), which would otherwise hold a
# CPU's place for most of a cold run.
printf '{"version": {"major": 1, "minor": 0}, "local": [{"cpus": [{"id": "0", "slots": %d}]}]}\n' \
  "$jobs" >build/ctest-cpus.json
parallel=$((jobs + 2)) run_ctest build release --resource-spec-file ctest-cpus.json
if ((aarch64)); then
  echo "== tests: unit + integration (aarch64 under qemu-user)"
  # What qemu-user cannot run is left out by name, with the reason
  # (tests/qemu_user_skips.cmake); the list is printed here so no skip is silent.
  if [[ -s build-aarch64/qemu-user-skips.txt ]]; then
    sed 's/^/not run under qemu-user: /' build-aarch64/qemu-user-skips.txt
  fi
  started=$SECONDS
  run_ctest build-aarch64 aarch64 -L 'unit|integration'
  echo "aarch64 tests under qemu-user: $((SECONDS - started)) s"
fi
echo "== tests: unit + integration (asan+ubsan)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  run_ctest build-asan asan+ubsan -L 'unit|integration'
echo "== fuzz (libFuzzer): the bundle manifest, ralphd's request decoder and policy, the agents' event streams"
cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
cmake --build build-fuzz -j "$jobs"
# name, seed corpus, seconds. Each fuzzer's progress goes to its log; a
# crash's report is printed.
while read -r fuzzer seeds seconds; do
  mkdir -p "build-fuzz/corpus-$fuzzer"
  if ! "build-fuzz/$fuzzer" -max_total_time="$seconds" -artifact_prefix="build-fuzz/$fuzzer-" \
         "build-fuzz/corpus-$fuzzer" "$seeds" >"build-fuzz/$fuzzer.log" 2>&1; then
    status=1
    tail -n 60 "build-fuzz/$fuzzer.log"
    failed+=("fuzz: $fuzzer (log: build-fuzz/$fuzzer.log)")
  fi
  echo "$fuzzer: $(grep -E '^Done [0-9]+ runs' "build-fuzz/$fuzzer.log" || echo 'no summary')"
done <<'FUZZERS'
manifest_fuzzer tests/ota/fuzz/corpus 30
request_fuzzer tests/ralphd/fuzz/corpus/request 20
policy_fuzzer tests/ralphd/fuzz/corpus/policy 20
agent_events_fuzzer tests/agents/fuzz/corpus 20
protocol_fuzzer tests/sandbox_vm/fuzz/corpus 20
FUZZERS

# A failed test's output, from ctest's log of the run: its first failures
# (googletest's "file:line: Failure" and what follows) and its last lines.
test_output() {
  local log=$1/Testing/Temporary/LastTest.log name=$2 text
  text=$(awk -v t="$name" 'index($0, "Testing: " t) && $0 ~ (t "$") {on = 1}
                           on {print}
                           on && index($0, "\"" t "\" end time") == 1 {exit}' "$log")
  grep -A 4 -E ': Failure$' <<<"$text" | head -n 20 | sed 's/^/  | /'
  echo "  | ..."
  grep -v -E '^(-+|<end of output>|Test time = .*)$' <<<"$text" | tail -n 12 | sed 's/^/  | /'
}

show() {
  echo "$1 $2"
  case $2 in
    release:*) test_output build "${2#release: }" ;;
    asan+ubsan:*) test_output build-asan "${2#asan+ubsan: }" ;;
    aarch64:*) test_output build-aarch64 "${2#aarch64: }" ;;
  esac
}

echo "== summary"
((aarch64)) || echo "aarch64 build and tests NOT RUN (RALPH_TEST_AARCH64=0)"
for entry in "${retried[@]}"; do show "RETRIED (failed, then passed on its second run)" "$entry"; done
for entry in "${failed[@]}"; do show FAILED "$entry"; done
((${#failed[@]})) || echo "all tests passed"
exit $status
