#!/bin/sh
# Post-build step shared by every board (Buildroot's BR2_ROOTFS_POST_BUILD_SCRIPT, and
# image/offline/build for the Debian-based test image).
#   post-build.sh TARGET_DIR BOARD_DIR
# Makes the read-only root ready: mount points, an empty machine-id, the kernel at a fixed
# name, and the RAUC system configuration for the board's boot loader (from BOARD_DIR/board.env).
set -eu
target=$1
board=$2
# shellcheck source=/dev/null
. "$board/board.env"

mkdir -p "$target/data" "$target/var/lib/hearth" "$target$HEARTH_BOOT_MOUNT" "$target/etc/rauc"
# Empty: systemd makes a transient id at every boot instead of writing to the read-only root.
: > "$target/etc/machine-id"
for kernel in bzImage Image; do
  if [ -f "$target/boot/$kernel" ] && [ ! -e "$target/boot/vmlinuz" ]; then
    ln -s "$kernel" "$target/boot/vmlinuz"
  fi
done

# The boot partition (boot loader and its A/B environment), mounted for RAUC.
unit=$(echo "${HEARTH_BOOT_MOUNT#/}" | tr / -).mount
mkdir -p "$target/usr/lib/systemd/system/local-fs.target.wants"
cat > "$target/usr/lib/systemd/system/$unit" <<UNIT
[Unit]
Description=Boot partition (boot loader and its A/B environment)

[Mount]
What=/dev/disk/by-partlabel/$HEARTH_BOOT_PARTITION
Where=$HEARTH_BOOT_MOUNT
Type=vfat
Options=umask=0077,noatime,nodev,nosuid,noexec,flush
UNIT
ln -sf "../$unit" "$target/usr/lib/systemd/system/local-fs.target.wants/$unit"

{
  echo "[system]"
  echo "compatible=hearth-$HEARTH_BOARD"
  echo "bootloader=$HEARTH_BOOTLOADER"
  if [ "$HEARTH_BOOTLOADER" = grub ]; then echo "grubenv=$HEARTH_BOOT_MOUNT/EFI/BOOT/grubenv"; fi
  echo "statusfile=/data/rauc/status.raucs"
  echo "bundle-formats=-plain"
  echo
  echo "[keyring]"
  echo "path=/etc/rauc/keyring.pem"
  printf '\n[slot.rootfs.0]\ndevice=/dev/disk/by-partlabel/rootfs_a\ntype=ext4\nbootname=A\n'
  printf '\n[slot.rootfs.1]\ndevice=/dev/disk/by-partlabel/rootfs_b\ntype=ext4\nbootname=B\n'
} > "$target/etc/rauc/system.conf"
if [ "$HEARTH_BOOTLOADER" = uboot ]; then
  echo "$HEARTH_BOOT_MOUNT/uboot.env 0x0000 0x4000" > "$target/etc/fw_env.config"
fi

# Bundles are verified against this keyring: a release build passes its CA in
# HEARTH_RAUC_KEYRING; without one a development CA is made (never ship that).
if [ -n "${HEARTH_RAUC_KEYRING:-}" ]; then
  cp "$HEARTH_RAUC_KEYRING" "$target/etc/rauc/keyring.pem"
elif [ ! -f "$target/etc/rauc/keyring.pem" ]; then
  echo "post-build: HEARTH_RAUC_KEYRING not set; installing a throwaway development CA" >&2
  dev=$(mktemp -d)
  openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=Hearth development CA" \
    -keyout "$dev/key.pem" -out "$target/etc/rauc/keyring.pem" 2>/dev/null
  rm -rf "$dev"
fi

if [ -x "$board/post-build.sh" ]; then "$board/post-build.sh" "$target"; fi
