#!/bin/sh
# Buildroot post-image step shared by every board:
#   post-image.sh BINARIES_DIR BOARD_DIR
# runs the board's hook (boot loader files into BINARIES_DIR), then genimage with the board's
# layout: boot (efi on EFI boards), rootfs_a, rootfs_b, data.
set -eu
binaries=$1
board=$2
if [ -x "$board/post-image.sh" ]; then "$board/post-image.sh" "$binaries"; fi
# A hook may write the layout itself (e.g. the Raspberry Pi firmware file list).
cfg=$board/genimage.cfg
if [ -f "$binaries/genimage.cfg" ]; then cfg=$binaries/genimage.cfg; fi
exec support/scripts/genimage.sh -c "$cfg"
