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
for variant in base health-fail broken-initrd hang not-a-filesystem; do
  b_variant=$variant
  [[ $variant == base ]] && b_variant=good
  echo "e2e_images: building $variant"
  "$mkimage" --out "$out/$variant.img" --work "$out/work-$variant" --b-variant "$b_variant" "${common[@]}"
  rm -rf "$out/work-$variant"
done
