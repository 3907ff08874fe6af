#!/usr/bin/env bash
# e2e fixture: the appliance as it leaves the factory with the coding agents:
# the base image's slots plus a VAR holding a signed agent-image bundle of the
# agent image (tools/agent-image, built by the agent_image_build fixture),
# which ralphd installs at its first start.
# The bundle is signed by the e2e test PKI (e2e_images made it) and checked
# against the slots' keyring, as a release's would be. Its UKIs are signed
# with the snakeoil key like the other e2e images' (build_images.sh): the
# harness boots with Secure Boot on.
# Usage: build_agents_image.sh <ralph-mkimage> <bin-dir> <images-dir> <agent-image.squashfs>
set -euo pipefail
mkimage=$1 bin_dir=$2 out=$3 image=$4
pki=$out/pki
[[ -f $pki/signer.crt ]] || { echo "build_agents_image: $pki is missing (e2e_images makes it)" >&2; exit 1; }
[[ -f $image ]] || { echo "build_agents_image: $image is missing (agent_image_build makes it)" >&2; exit 1; }
bundle=$out/agents.rbundle
trap 'rm -f "$bundle"; rm -rf "$out/work-agents"' EXIT
"$bin_dir/ralph-bundle" create --kind agent-image --cert "$pki/signer.crt" --key "$pki/signer.key" \
  --version 1.0.0 --product ralphos --arch x86_64 --agent-image "$image" -o "$bundle"
"$mkimage" --out "$out/agents.img" --work "$out/work-agents" --b-variant good \
  --bin-dir "$bin_dir" --test-agent --watchdog-seconds 10 \
  --keyring "$pki/release-ca.crt" --update-ca "$pki/tls-ca.crt" \
  --secure-boot-key "$pki/sb-snakeoil.key" --secure-boot-cert /usr/share/ovmf/PkKek-1-snakeoil.pem \
  --agent-bundle "$bundle" >"$out/agents.log" 2>&1 || { cat "$out/agents.log"; exit 1; }
echo "e2e_agents_image: built $out/agents.img"
