#!/bin/sh
# Buildroot post-image step shared by every board:
#   post-image.sh BINARIES_DIR BOARD_DIR
# runs the board's hook (boot loader files into BINARIES_DIR), then genimage with the board's
# layout: boot, rootfs_a, rootfs_b, data.
set -eu
binaries=$1
board=$2
if [ -x "$board/post-image.sh" ]; then "$board/post-image.sh" "$binaries"; fi
exec support/scripts/genimage.sh -c "$board/genimage.cfg"
