#!/usr/bin/env bash
# Installs every Debian package the build, the tests, the image builder and
# the benchmarks need. Idempotent: a second run installs nothing new.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config clang clang-format libclang-rt-14-dev
  # libraries (see README "Libraries")
  libexpected-dev zlib1g-dev libssl-dev openssl libefivar-dev libefiboot-dev libblkid-dev libfdisk-dev
  libseccomp-dev libcap-dev libnftnl-dev libmnl-dev libldns-dev libc-ares-dev libsqlite3-dev libtinyxml2-dev
  nlohmann-json3-dev libfmt-dev libcurl4-openssl-dev libcpp-httplib-dev
  # command lines (CLI11), the control plane's HTTPS/WebSocket server (Boost.Beast
  # over Boost.Asio with OpenSSL) and the pairing QR code (libqrencode)
  libcli11-dev libboost1.81-dev libqrencode-dev
  # ralphd's workspace upload and download: tar archives read and written in
  # process, a hostile upload extracted with libarchive's secure-extract flags
  libarchive-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # the OTA writer's read-back fingerprints (XXH3-128, header-only use)
  libxxhash-dev
  # image building and booting
  qemu-system-x86 qemu-utils ovmf systemd-boot-efi binutils mtools dosfstools
  squashfs-tools erofs-utils e2fsprogs fdisk util-linux kmod cpio zstd xz-utils
  efibootmgr dhcpcd-base
  # the slot's read-only sandbox base (ralphd's jobs): one static busybox
  busybox-static
  # loop mode's commits: ralphd's git, staged into every slot by ralph-mkimage
  git
  # sandbox tests and peers for the benchmarks
  iproute2 nftables bubblewrap rauc hyperfine procps psmisc
  # ralphd_bench's peer for the HTTPS API: a static file over mutual TLS
  nginx
  # profiling the sandbox's start-up (perf trace, perf stat, strace)
  linux-perf strace
  # audit log tests tamper with the database through the sqlite3 shell
  sqlite3
  # scripts/test.sh compiles through it (reruns and fresh clones reuse objects)
  ccache
  # the agent image (tools/agent-image): a Debian root made with debootstrap,
  # the npm tarballs fetched with curl and checked with openssl
  debootstrap curl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi
