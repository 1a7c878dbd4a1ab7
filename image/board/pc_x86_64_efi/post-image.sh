#!/bin/sh
# GRUB's script, the board's console line and the initial A/B environment next to
# Buildroot's EFI loader.
set -eu
here=$(dirname "$0")
cp "$here/../common/grub.cfg" "$here/grub-board.cfg" "$1/efi-part/EFI/BOOT/"
"$here/../common/grubenv.sh" "$1/efi-part/EFI/BOOT/grubenv"
