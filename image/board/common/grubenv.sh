#!/bin/sh
# Writes a GRUB environment block (1024 bytes) with the initial A/B state: slot A good,
# slot B empty. Same format as grub-editenv, without needing GRUB's tools on the build host.
#   grubenv.sh FILE
set -eu
{
  printf '# GRUB Environment Block\n'
  printf '%s\n' 'ORDER=A B' A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
} > "$1"
size=$(wc -c < "$1")
head -c $((1024 - size)) /dev/zero | tr '\0' '#' >> "$1"
