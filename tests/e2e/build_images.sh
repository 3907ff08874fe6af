#!/usr/bin/env bash
# e2e fixture: builds the disk images the e2e tests boot, once per test run.
#   base              good A and B, with the test agent
#   health-fail       B has a required service that cannot start
#   broken-initrd     B's initrd is truncated (the kernel never reaches early boot)
#   hang              B's PID 1 hangs after early boot (the watchdog resets)
#   not-a-filesystem  B's slot partition holds random bytes
# Usage: build_images.sh <ralph-mkimage> <bin-dir> <out-dir>
set -euo pipefail
mkimage=$1 bin_dir=$2 out=$3
mkdir -p "$out"
common=(--bin-dir "$bin_dir" --test-agent --watchdog-seconds 10)
build() {
  local variant=$1 b_variant=$1
  [[ $variant == base ]] && b_variant=good
  "$mkimage" --out "$out/$variant.img" --work "$out/work-$variant" --b-variant "$b_variant" \
    "${common[@]}" >"$out/$variant.log" 2>&1 || { cat "$out/$variant.log"; return 1; }
  rm -rf "$out/work-$variant"
  echo "e2e_images: built $variant"
}
# The kernel cache is filled once before the parallel builds share it.
build base
pids=()
for variant in health-fail broken-initrd hang not-a-filesystem; do
  build "$variant" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
