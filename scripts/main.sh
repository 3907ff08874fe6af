#!/usr/bin/env bash
# The main job: build RalphOS, build the appliance disk image with
# ralph-mkimage, and boot it in QEMU with OVMF (headless, TCG), the serial
# console streamed to this terminal. The machine's NVRAM is a VARS file kept
# across its boots (build/main/vars.fd):
#   boot 1: a fresh machine (empty NVRAM) boots the removable-media path,
#           early boot provisions the Boot#### entries, VAR is created, the
#           health gate passes and slot A is committed;
#   boot 2: the firmware boots A through its own Boot#### entry; once the
#           appliance has printed its pairing string (no client is paired
#           yet), the host plays the companion client through a forwarded
#           port (scripts/companion.sh): pairs, runs a job with a small
#           workspace in a sandbox on the appliance with its output streamed
#           here, downloads the workspace and shows it; then the job exits.
# Boot 1 stops once the health gate has reported.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"

out=build/main
mkdir -p "$out"
step() { printf '\n==== %s\n' "$*"; }

# A development release PKI (kept across runs, so bundles signed with it
# later still install): the slots trust release-ca as their OTA keyring, and
# signer signs the factory bundle on RECOVERY.
pki=$out/pki
[[ -f $pki/signer.key ]] || { step "development PKI (openssl) in $pki"; scripts/dev-pki.sh "$pki"; }

step "ralph-mkimage: kernel (cached in ~/.cache/ralphos), initrd, UKIs, slot images, factory bundle, GPT disk"
./build/bin/ralph-mkimage --out "$out/ralphos.img" --work "$out/work" \
  --keyring "$pki/release-ca.crt" --update-ca "$pki/tls-ca.crt" \
  --signing-cert "$pki/signer.crt" --signing-key "$pki/signer.key"
# A new disk is a new machine: start from the firmware's empty NVRAM.
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$out/vars.fd"

step "boot 1: fresh machine (QEMU q35 + OVMF, TCG; console below)"
./build/bin/ralph-run-qemu --disk "$out/ralphos.img" --vars "$out/vars.fd" \
  --console "$out/console-1.log" --until "health gate passed" --timeout 600

step "boot 2: same disk and NVRAM; the firmware now boots A's Boot#### entry; then the companion client"
./build/bin/ralph-run-qemu --disk "$out/ralphos.img" --vars "$out/vars.fd" \
  --console "$out/console-2.log" --forward 0:8443 --until "one-time offer" --timeout 600 \
  -- scripts/companion.sh "$out" "$out/console-2.log"

grep -a 'BdsDxe: starting' "$out/console-2.log" | grep -q '"RalphOS A"' || {
  echo "main: boot 2 did not come through RalphOS A's Boot#### entry" >&2
  exit 1
}
grep -aq 'health gate passed: slot A committed' "$out/console-2.log" || {
  echo "main: boot 2's health gate did not pass" >&2
  exit 1
}
step "main: OK (disk $out/ralphos.img, NVRAM $out/vars.fd, consoles $out/console-*.log)"
