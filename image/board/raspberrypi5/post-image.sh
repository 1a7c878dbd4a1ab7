#!/bin/sh
# Raspberry Pi: the firmware loads U-Boot (config.txt: kernel=u-boot.bin), U-Boot runs boot.scr.
# Writes BINARIES_DIR/genimage.cfg with the boot partition's file list.
set -eu
binaries=$1
here=$(dirname "$0")
files=$(cd "$binaries" && for f in rpi-firmware/* *.dtb u-boot.bin boot.scr; do
  [ -e "$f" ] && printf '      "%s",\n' "$f"
done)
awk -v files="$files" '{ if ($0 == "#BOOT_FILES#") print files; else print }' \
  "$here/genimage.cfg.in" > "$binaries/genimage.cfg"
