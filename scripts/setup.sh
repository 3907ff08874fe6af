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
  # dm-verity hash trees of the root images (veritysetup format, build host only)
  cryptsetup-bin
  # UEFI Secure Boot: sbsign/sbverify sign and check the unified kernel images;
  # efitools makes the signed key lists the provisioning step enrolls
  sbsigntool efitools
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
  # aarch64: the cross compiler, and qemu-user (with binfmt_misc) for the
  # arm64 build's tests and its build-time generator (docs/DEVELOPING.md
  # "aarch64")
  g++-aarch64-linux-gnu qemu-user-static binfmt-support
  # the arm64 libraries of the list above, beside the host's (dpkg multiarch)
  zlib1g-dev:arm64 libssl-dev:arm64 libefivar-dev:arm64 libefiboot-dev:arm64 libblkid-dev:arm64
  libfdisk-dev:arm64 libseccomp-dev:arm64 libcap-dev:arm64 libnftnl-dev:arm64 libmnl-dev:arm64
  libc-ares-dev:arm64 libsqlite3-dev:arm64 libtinyxml2-dev:arm64 libfmt-dev:arm64
  libcurl4-openssl-dev:arm64 libarchive-dev:arm64 libqrencode-dev:arm64 libgtest-dev:arm64
  libgmock-dev:arm64 libcpp-httplib-dev:arm64 libxxhash-dev:arm64
)
# Installed on their own: libldns-dev's amd64 and arm64 builds ship
# different bytes of the same /usr/share/doc HTML files, which dpkg refuses
# for a Multi-Arch: same package unless told to overwrite them.
overwrite_packages=(libldns-dev:arm64)

# The arm64 packages above come through dpkg multiarch. Adding the
# architecture changes which package lists apt needs: force one update.
update_needed=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  update_needed=1
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
missing_overwrite=()
for p in "${overwrite_packages[@]}"; do
  installed "$p" || missing_overwrite+=("$p")
done

export DEBIAN_FRONTEND=noninteractive
if ((${#missing[@]} + ${#missing_overwrite[@]})); then
  echo "setup: installing $((${#missing[@]} + ${#missing_overwrite[@]})) Debian packages: ${missing[*]} ${missing_overwrite[*]}"
  apt-get update
  if ((${#missing[@]})); then
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  if ((${#missing_overwrite[@]})); then
    apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-overwrite "${missing_overwrite[@]}"
  fi
else
  ((update_needed == 0)) || apt-get update
  echo "setup: all Debian packages present"
fi

# qemu-user through binfmt_misc, so that arm64 programs run as if native
# (the aarch64 build's tests exec arm64 helpers). The kernel forgets the
# registration at reboot and a container may start without binfmt_misc
# mounted: mount it and (re)enable qemu-aarch64 every time.
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/register ]]; then
  mount -t binfmt_misc binfmt_misc "$binfmt" ||
    echo "setup: cannot mount binfmt_misc: arm64 programs will not run directly" >&2
fi
if [[ -e $binfmt/register && ! -e $binfmt/qemu-aarch64 ]]; then
  update-binfmts --enable qemu-aarch64 ||
    echo "setup: cannot register qemu-aarch64 with binfmt_misc" >&2
fi
