#!/usr/bin/env bash
# The build host as the appliance's companion client, run by scripts/main.sh
# (through ralph-run-qemu) while the booted appliance runs: reads the pairing
# string the appliance printed on its serial console, pairs through the QEMU
# host forward of ralphd's API port (dialling the forward, pinning the device
# key the string names), runs a job with a small workspace in a sandbox on the
# appliance with its output streamed here, downloads the job's workspace and
# shows what came back.
# Usage: companion.sh OUT_DIR CONSOLE_LOG
#   RALPH_FORWARD_8443: the host port forwarded to the API (ralph-run-qemu --forward 0:8443)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 console=$2
port=${RALPH_FORWARD_8443:?the host port forwarded to the API (ralph-run-qemu --forward 0:8443)}
address=127.0.0.1:$port
step() { printf '\n==== %s\n' "$*"; }

ctl=./build/bin/ralphctl

pairing=$(grep -ao 'ralphos-pair:v1?[^[:space:]]*' "$console" | tail -n 1 || true)
[[ -n $pairing ]] || { echo "companion: no pairing string in $console" >&2; exit 1; }
identity=$out/companion
rm -rf "$identity"
step "pair through $address with $pairing"
"$ctl" remote pair --identity "$identity" --address "$address" "$pairing"

workspace=$out/workspace
rm -rf "$workspace" && mkdir -p "$workspace"
printf 'RalphOS runs coding agents in sandboxes.\nThis file came from the host.\n' >"$workspace/notes.txt"
printf 'print("hello")\n' >"$workspace/hello.py"
tar -C "$workspace" -cf "$out/workspace.tar" notes.txt hello.py

step "job in a sandbox on the appliance (default policy), output streamed"
remote=(--remote "https://$address" --identity "$identity")
"$ctl" "${remote[@]}" job run --json --workspace "$out/workspace.tar" -- sh -c '
  echo "sandbox: uid $(id -u) in $(pwd) on $(uname -n)"
  ls -l
  wc -l notes.txt
  sha256sum notes.txt hello.py | tee checksums.txt
  echo "written by the job at $(date -u +%FT%TZ)" > result.txt
  echo "a line on stderr" >&2' | tee "$out/job.txt" | sed '/^{$/,$d'
# --json ends the output with the job's record (kept in job.txt, not shown).
field() { sed -n "s/^  \"$1\": \"*\([^\",]*\)\"*,*\$/\1/p" "$out/job.txt" | tail -n 1; }
id=$(field id)
[[ -n $id ]] || { echo "companion: no job id in the job record ($out/job.txt)" >&2; exit 1; }
echo "job $id: $(field state), exit code $(field exit_code) (its record: $out/job.txt)"

step "download job $id's workspace"
"$ctl" "${remote[@]}" job download --output "$out/downloaded.tar" "$id"
rm -rf "$out/downloaded" && mkdir -p "$out/downloaded"
tar -C "$out/downloaded" -xf "$out/downloaded.tar"
tar -tvf "$out/downloaded.tar"
for file in checksums.txt result.txt; do
  [[ -f $out/downloaded/$file ]] || { echo "companion: $file is not in the workspace" >&2; exit 1; }
  printf -- '--- %s\n' "$file" && cat "$out/downloaded/$file"
done
step "companion: paired, ran job $id, downloaded its workspace ($out/downloaded)"
