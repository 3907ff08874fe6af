#!/usr/bin/env bash
# Makes a development PKI with openssl in DIR (fresh keys; never committed):
#   release-ca.{crt,key}  the OTA keyring's CA (ralph-mkimage --keyring)
#   signer.{crt,key}      a release signer under it (code signing; signs the
#                         factory bundle and update bundles)
#   tls-ca.{crt,key}      the CA update servers are checked against
#                         (ralph-mkimage --update-ca)
#   server.{crt,key}      an update server certificate for 10.0.2.2 (the host
#                         as QEMU user networking shows it) and 127.0.0.1
#   sb-pk.{crt,key}       UEFI Secure Boot: the platform key (owner of the KEK)
#   sb-kek.{crt,key}      UEFI Secure Boot: the key exchange key (signs db updates)
#   sb-db.{crt,key}       UEFI Secure Boot: the db key that signs the unified
#                         kernel images (ralph-mkimage --secure-boot-key/-cert)
#                         (signed lists for enrolling them:
#                         scripts/secure-boot-lists.sh, docs/secure-boot.md)
# Keys are RSA: ECDSA signatures are not deterministic, and the factory
# bundle must be reproducible.
# Usage: dev-pki.sh DIR
set -euo pipefail
pki=${1:?usage: dev-pki.sh DIR}
command -v openssl >/dev/null || { echo "dev-pki: openssl is missing (Debian package openssl)" >&2; exit 1; }
rm -rf "$pki"
mkdir -p "$pki"
make_ca() {  # name subject
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}
make_leaf() {  # name subject issuer extensions
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "$2" -keyout "$pki/$1.key" \
    -out "$pki/$1.csr" 2>/dev/null
  printf '%b' "$4" >"$pki/$1.ext"
  openssl x509 -req -sha256 -days 825 -in "$pki/$1.csr" -CA "$pki/$3.crt" -CAkey "$pki/$3.key" \
    -CAcreateserial -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
make_ca release-ca "/O=RalphOS development/CN=RalphOS development release CA"
make_leaf signer "/O=RalphOS development/CN=RalphOS development release signer" release-ca \
  'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n'
make_ca tls-ca "/O=RalphOS development/CN=RalphOS development update server CA"
make_leaf server "/O=RalphOS development/CN=10.0.2.2" tls-ca \
  'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:10.0.2.2,IP:127.0.0.1\n'
# Secure Boot: three self-signed certificates, as UEFI firmware expects
# (each list entry is one X.509 certificate; no chain is walked).
make_sb() {  # name common-name
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -subj "/O=RalphOS development/CN=RalphOS development $2" \
    -keyout "$pki/$1.key" -out "$pki/$1.crt" 2>/dev/null
}
make_sb sb-pk "Secure Boot PK"
make_sb sb-kek "Secure Boot KEK"
make_sb sb-db "Secure Boot db"
