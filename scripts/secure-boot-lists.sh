#!/usr/bin/env bash
# Makes the signed UEFI Secure Boot key lists that `ralphctl secure-boot
# enroll` writes on a machine in setup mode (docs/secure-boot.md
# "Provisioning"), with efitools:
#   OUT/PK.auth   the PK certificate, signed by the PK key
#   OUT/KEK.auth  the KEK certificate, signed by the PK key
#   OUT/db.auth   the db certificates (one or more), signed by the KEK key
# Each certificate goes in with the owner GUID given (default: a fixed one
# per appliance vendor; the firmware does not check it).
# Usage: secure-boot-lists.sh OUT PK.crt PK.key KEK.crt KEK.key DB.crt [DB.crt...]
#        (RALPH_SB_OWNER_GUID=<guid> to choose the owner GUID)
set -euo pipefail
(($# >= 6)) || { echo "usage: secure-boot-lists.sh OUT PK.crt PK.key KEK.crt KEK.key DB.crt [DB.crt...]" >&2; exit 2; }
out=$1 pk_crt=$2 pk_key=$3 kek_crt=$4 kek_key=$5
shift 5
for tool in cert-to-efi-sig-list sign-efi-sig-list openssl; do
  command -v "$tool" >/dev/null || { echo "secure-boot-lists: $tool is missing (Debian package efitools/openssl)" >&2; exit 1; }
done
owner=${RALPH_SB_OWNER_GUID:-5a5c9f2e-8d4b-4e51-9c1a-52414c50484f}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# efitools reads PEM certificates; a DER one is converted first.
esl() {  # cert out
  openssl x509 -in "$1" -out "$work/cert.pem" 2>/dev/null ||
    openssl x509 -inform DER -in "$1" -out "$work/cert.pem"
  cert-to-efi-sig-list -g "$owner" "$work/cert.pem" "$2" >/dev/null
}
esl "$pk_crt" "$work/PK.esl"
esl "$kek_crt" "$work/KEK.esl"
: >"$work/db.esl"
i=0
for crt in "$@"; do
  esl "$crt" "$work/db$i.esl"
  cat "$work/db$i.esl" >>"$work/db.esl"
  i=$((i + 1))
done
sign-efi-sig-list -k "$pk_key" -c "$pk_crt" PK "$work/PK.esl" "$out/PK.auth" >/dev/null
sign-efi-sig-list -k "$pk_key" -c "$pk_crt" KEK "$work/KEK.esl" "$out/KEK.auth" >/dev/null
sign-efi-sig-list -k "$kek_key" -c "$kek_crt" db "$work/db.esl" "$out/db.auth" >/dev/null
