#!/usr/bin/env bash
# e2e fixture: builds the disk images the e2e tests boot, once per test run.
#   base              good A and B, with the test agent
#   health-fail       B's ralphd cannot start (a library it needs is missing)
#   broken-initrd     B's initrd is truncated (the kernel never reaches early boot)
#   hang              B's PID 1 hangs after early boot (the watchdog resets)
#   not-a-filesystem  B's slot partition holds random bytes
# Every image carries a test PKI made by scripts/dev-pki.sh (fresh keys each
# run, never committed): pki/release-ca.crt is the slots' OTA keyring,
# pki/signer.{crt,key} sign the factory bundle and the test bundles,
# pki/tls-ca.crt is the slots' trust store for update servers, and
# pki/server.{crt,key} is the update server's certificate (for 10.0.2.2, the
# host as QEMU user networking shows it to the guest, and 127.0.0.1).
# Every unified kernel image is signed for UEFI Secure Boot with Debian's
# snakeoil key (package ovmf), the db of the VARS template the harness boots
# with (OVMF_VARS_4M.snakeoil.fd): the scenarios run with Secure Boot on.
# Its PEM key is encrypted (password "snakeoil", as Debian documents it);
# sbsign reads only an unencrypted one, so a decrypted copy goes into pki/.
# Every root also carries the provisioning lists (pki/secure-boot/*.auth:
# the PKI's sb-pk and sb-kek, a db of sb-db and the snakeoil certificate)
# that e2e_first_boot enrolls on a machine in setup mode.
# The base and health-fail builds also export their slot payloads
# (<variant>-payloads/{system_b.img,b.efi,...}) for the OTA e2e test.
#
# Only the base image is booted whole. The tests take nothing from a
# variant image but its slot B (the EFI partition with b.efi, SYSTEM_B, the
# exported payloads), so the variants are built without the factory bundle
# (their RECOVERY holds the plain good system): signing it and compressing
# RECOVERY would be half of each variant's build for bytes no test reads.
# All five build at once: ralph-mkimage locks its kernel cache while it
# fills it.
# Usage: build_images.sh <ralph-mkimage> <bin-dir> <out-dir>
set -euo pipefail
mkimage=$1 bin_dir=$2 out=$3
mkdir -p "$out"

pki=$out/pki
"$(dirname "$0")/../../scripts/dev-pki.sh" "$pki"

snakeoil=/usr/share/ovmf/PkKek-1-snakeoil
openssl pkey -in "$snakeoil.key" -passin pass:snakeoil -out "$pki/sb-snakeoil.key"
"$(dirname "$0")/../../scripts/secure-boot-lists.sh" "$pki/secure-boot" \
  "$pki/sb-pk.crt" "$pki/sb-pk.key" "$pki/sb-kek.crt" "$pki/sb-kek.key" \
  "$pki/sb-db.crt" "$snakeoil.pem"
common=(--bin-dir "$bin_dir" --test-agent --watchdog-seconds 10
  --keyring "$pki/release-ca.crt" --update-ca "$pki/tls-ca.crt"
  --secure-boot-key "$pki/sb-snakeoil.key" --secure-boot-cert "$snakeoil.pem"
  --secure-boot-enroll "$pki/secure-boot")
build() {
  local variant=$1 b_variant=$1 extra=()
  [[ $variant == base ]] && b_variant=good
  [[ $variant == base || $variant == health-fail ]] && extra+=(--payloads-dir "$out/$variant-payloads")
  [[ $variant == base ]] && extra+=(--signing-cert "$pki/signer.crt" --signing-key "$pki/signer.key")
  "$mkimage" --out "$out/$variant.img" --work "$out/work-$variant" --b-variant "$b_variant" \
    "${common[@]}" "${extra[@]}" >"$out/$variant.log" 2>&1 || { cat "$out/$variant.log"; return 1; }
  rm -rf "$out/work-$variant"
  echo "e2e_images: built $variant"
}
pids=()
for variant in base health-fail broken-initrd hang not-a-filesystem; do
  build "$variant" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
