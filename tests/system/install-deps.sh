#!/usr/bin/env bash
# Installs what the system tests (scripts/system-test.sh) need on the host,
# from Debian's packages, only when one is missing and only with CI=true as
# root (the CI machine is thrown away after the run). Otherwise it names what
# is missing and fails.
#   mmdebstrap        the VM image and the container stand-in base images
#   qemu-system-x86   the VM (TCG); from bookworm-backports, to match the
#                     backports qemu-utils these machines come with
#   qemu-utils        qemu-img (the throwaway overlays)
#   podman, runc      builds and runs the Dockerfile (crun fails on this
#                     host's hybrid cgroups, hence runc)
#   dcmtk             the cloud's side: echoscu, storescu, findscu, dump2dcm
#   openssh-client    the test's control channel into the guest
#   e2fsprogs         mkfs.ext4 -d (the VM's root file system)
# bookworm-backports is added for this one apt call through apt's options,
# pointing at a sources file under target/, never by editing /etc.
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"

need=()
missing() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
missing mmdebstrap mmdebstrap
missing podman podman
missing runc runc
missing storescu dcmtk
missing ssh openssh-client
missing mkfs.ext4 e2fsprogs
missing python3 python3
missing dpkg-deb dpkg
need_bpo=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_bpo+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need_bpo+=(qemu-utils)

if [ ${#need[@]} -eq 0 ] && [ ${#need_bpo[@]} -eq 0 ]; then
  exit 0
fi
if [ "${CI:-}" != true ] || [ "$(id -u)" -ne 0 ]; then
  echo "system-test: missing ${need[*]} ${need_bpo[*]}; CI=true as root installs them (qemu-system-x86 from bookworm-backports)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=()
if [ ${#need_bpo[@]} -gt 0 ]; then
  . /etc/os-release
  # The mirror this machine's apt already uses.
  mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
           | awk '{print $2}' | grep -v security | head -n 1 || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  dir="$(pwd)/$target/system-test/apt"
  mkdir -p "$dir"
  # Dir::Etc::SourceList replaces /etc/apt/sources.list for these calls (the
  # sources.list.d parts stay): carry over its lines, add backports.
  { cat /etc/apt/sources.list 2>/dev/null || true
    echo "deb ${mirror%/} ${VERSION_CODENAME}-backports main"; } >"$dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$dir/sources.list")
fi
echo "system-test: installing ${need[*]} ${need_bpo[*]}"
apt-get "${apt_opts[@]}" update -qq
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ${#need_bpo[@]} -gt 0 ]; then
  apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    -t "${VERSION_CODENAME}-backports" "${need_bpo[@]}" >/dev/null
fi
