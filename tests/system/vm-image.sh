#!/usr/bin/env bash
# Builds the Debian 12 VM image the system test boots (tests/system/vm_test.py),
# from Debian's packages only, and prints the directory that holds it:
#   vmlinuz, initrd.img   the guest's own kernel and initramfs (direct boot)
#   rootfs.img            ext4, raw; every boot writes to a throwaway qcow2 overlay
#   id_ed25519            root's SSH key (the test drives the guest over SSH)
# The image is cached under target/system-test/vm-<key>/, where the key is a
# hash of this file (the package list, the customisation) and of the mirror:
# editing either builds a new image; other cached images are removed.
#
# Usage: tests/system/vm-image.sh TARGET_DIR      (needs root, mmdebstrap, mkfs.ext4)
set -euo pipefail
target="${1:?usage: vm-image.sh TARGET_DIR}"
suite=bookworm

# The guest: systemd as PID 1 and what the checks drive inside it. dcmtk gives
# the backends (storescp, wlmscpfs); curl the admin endpoint; openssh-server
# the test's control channel; iproute2 `ss` (who holds a listening socket).
# The kernel is linux-image-amd64, not the cloud kernel: that one has no 9p.
packages=(
  systemd systemd-sysv udev dbus kmod initramfs-tools linux-image-amd64
  openssh-server dcmtk curl iproute2 ca-certificates procps
)

# The mirror this machine's own apt uses (CI machines are like it), unless
# DG_SYS_MIRROR names one.
host_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n 1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
mirror="${DG_SYS_MIRROR:-$(host_mirror)}"
mirror="${mirror%/}"
security="${mirror%/debian}/debian-security"

key=$( { cat "$0"; echo "$mirror"; } | sha256sum | cut -c1-16)
dir="$target/system-test/vm-$key"
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
# Only one image is kept: an edit of the package list leaves no stale copy.
rm -rf "$target"/system-test/vm-*
mkdir -p "$dir"
root="$dir/rootfs"
# --one-file-system: never into a /proc or /dev a failed build left mounted.
trap 'rm -rf --one-file-system "$root" "$dir/initramfs"' EXIT

# Only the directory goes to stdout (the caller reads it); the build's own
# output goes to stderr.
exec 3>&1 1>&2
start=$(date +%s)
echo "vm-image: building $dir (Debian $suite from $mirror: ${packages[*]})" >&2
# A small initramfs: only what mounts the root file system (MODULES=list plus
# this hook) builds and unpacks in seconds instead of a minute under TCG. In
# place before initramfs-tools and the kernel are configured.
initramfs="$dir/initramfs"
mkdir -p "$initramfs/conf.d" "$initramfs/hooks"
echo MODULES=list >"$initramfs/conf.d/dg-sys"
cat >"$initramfs/hooks/dg-sys" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_blk ext4
HOOK
chmod 0755 "$initramfs/hooks/dg-sys"
export DG_SYS_INITRAMFS="$initramfs"
mmdebstrap --mode=root --variant=minbase --quiet \
  --aptopt='Apt::Install-Recommends "false"' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools" && cp -r "$DG_SYS_INITRAMFS/." "$1/etc/initramfs-tools/"' \
  --include="$(IFS=,; echo "${packages[*]}")" \
  "$suite" "$root" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main" >&2

# Root logs in with a key made for this image, only over SSH.
ssh-keygen -q -t ed25519 -N '' -C dg-sys-test -f "$dir/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$dir/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
echo dg-sys-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 dg-sys-vm\n' >"$root/etc/hosts"
# The host's share (the packages under test, the test's files).
install -d "$root/mnt/share"
cat >"$root/etc/fstab" <<'EOF'
/dev/vda  /           ext4  rw,errors=remount-ro  0 1
share     /mnt/share  9p    trans=virtio,version=9p2000.L,msize=262144,nofail  0 0
EOF
# 9p's transport before local-fs.target mounts the share (loaded on demand by
# the mount itself, it finds no channel yet).
printf '9pnet_virtio\n9p\n' >"$root/etc/modules-load.d/dg-sys.conf"
# QEMU's user network: DHCP on the one virtio NIC.
cat >"$root/etc/systemd/network/10-dg-sys.network" <<'EOF'
[Match]
Name=en*
[Network]
DHCP=ipv4
EOF
chroot "$root" systemctl enable --quiet systemd-networkd.service ssh.service
# Nothing scheduled that would compete with the checks for the emulated CPU
# or change packages behind the test's back.
chroot "$root" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer fstrim.timer systemd-tmpfiles-clean.timer 2>/dev/null || true
# Debian's kernel and initramfs, booted directly by QEMU (no boot loader).
cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)" "$dir/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)" "$dir/initrd.img"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages*

mkfs.ext4 -q -F -L dg-sys-root -d "$root" "$dir/rootfs.img" 3G
touch "$dir/.complete"
echo "vm-image: built in $(( $(date +%s) - start )) s"
echo "$dir" >&3
