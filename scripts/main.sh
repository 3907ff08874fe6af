#!/usr/bin/env bash
# The main job. Until the bootable image exists: build, then show the slot
# manager's view of a directory-backed EFI store and a fresh GPT disk image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
echo "main: the slot manager and ralphctl are not built yet (issue 2 in progress)"
