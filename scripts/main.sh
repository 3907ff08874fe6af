#!/usr/bin/env bash
# The main job, until the bootable image exists (the QEMU boot replaces this):
# build, then drive the slot manager through `ralphctl boot` against a
# directory-backed EFI variable store (libefivar with EFIVARFS_PATH) and a
# fresh GPT disk image. The firmware's part of each power-on (BootNext taken
# and deleted, else BootOrder, else the removable path; BootCurrent set) is
# played by ralph-firmware-sim, the firmware model the tests use — not OVMF.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"

work=$(mktemp -d /tmp/ralph-main-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/efivars"
export EFIVARFS_PATH="$work/efivars/"
disk="$work/disk.img"
ralphctl() { ./build/bin/ralphctl "$@"; }
step() { printf '\n==== %s\n' "$*"; }
power_on() { cmdline=$(./build/bin/ralph-firmware-sim --disk "$disk"); }

step "a GPT disk image with the appliance's partitions (sfdisk)"
truncate -s 96M "$disk"
sfdisk -q "$disk" <<'TABLE'
label: gpt
size=16M, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
size=24M, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="SYSTEM_A"
size=24M, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="SYSTEM_B"
size=8M, type=4D21B016-B534-45C2-A9FB-5C16E091FD2D, name="VAR"
name="RECOVERY"
TABLE
sfdisk -d "$disk" | grep name=

step "ralphctl boot status (fresh machine, empty NVRAM)"
ralphctl boot status --efivars "$work/efivars" --disk "$disk" --cmdline ""

step "power-on: empty NVRAM, so the firmware takes the removable path"
power_on
step "first boot provisioning: ralphctl boot repair (entries, record, BootOrder)"
ralphctl boot repair --efivars "$work/efivars" --disk "$disk" --cmdline "$cmdline"
efibootmgr -v

step "power-on: A from its own entry; status"
power_on
ralphctl boot status --efivars "$work/efivars" --disk "$disk" --cmdline ""

step "update: B written (begin-write/finish-write), tried on the next boot (mark-active)"
ralphctl boot begin-write b --version 1.1.0 --efivars "$work/efivars" --disk "$disk" --cmdline ""
ralphctl boot finish-write b --version 1.1.0 \
  --digest "$(head -c 1M /dev/zero | sha256sum | cut -d' ' -f1)" \
  --efivars "$work/efivars" --disk "$disk" --cmdline ""
ralphctl boot mark-bad b --efivars "$work/efivars" --disk "$disk" --cmdline ""
ralphctl boot mark-active b --tries 2 --efivars "$work/efivars" --disk "$disk" --cmdline ""
ralphctl boot status --efivars "$work/efivars" --disk "$disk" --cmdline ""

step "power-on: the firmware takes BootNext (and deletes it): trial boot of B"
power_on
step "the health gate passes: ralphctl boot mark-good (booted slot from BootCurrent)"
ralphctl boot mark-good --efivars "$work/efivars" --disk "$disk" --cmdline ""
ralphctl boot status --efivars "$work/efivars" --disk "$disk" --cmdline ""

step "power-on: B is committed"
power_on
step "anti-rollback: trying A (version 0.0.0 < minimum 1.1.0) is refused"
if ralphctl boot mark-active a --efivars "$work/efivars" --disk "$disk" --cmdline ""; then
  echo "main: expected a refusal" >&2
  exit 1
fi
step "a bad slot name is a usage error (exit 2)"
set +e
ralphctl boot mark-active c --efivars "$work/efivars" --disk "$disk"
status=$?
set -e
[ "$status" = 2 ] || { echo "main: expected exit status 2, got $status" >&2; exit 1; }
ralphctl boot status --json --efivars "$work/efivars" --disk "$disk" --cmdline ""
echo
echo "main: OK"
