# Hearth A/B boot for U-Boot boards (RAUC uboot backend, same slot logic as the GRUB boards'
# grub.cfg). The environment (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT) is saved to uboot.env on
# the boot partition; RAUC's mark-good refills a slot's tries, each boot consumes one.
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 0

setenv slot
for s in ${BOOT_ORDER}; do
  if test -z "${slot}"; then
    if test "${s}" = "A" && test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1; setenv slot A; setenv root rootfs_a
    fi
    if test "${s}" = "B" && test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1; setenv slot B; setenv root rootfs_b
    fi
  fi
done
# Both slots out of tries: rescue boot of slot A with its tries refilled, never a boot loop.
if test -z "${slot}"; then
  setenv BOOT_A_LEFT 3; setenv slot A; setenv root rootfs_a
fi
saveenv

# Slots are found by GPT partition name, so boards may put other partitions first.
part number ${devtype} ${devnum} ${root} part
setenv bootargs "root=PARTLABEL=${root} ro rootwait rauc.slot=${slot} ${hearth_console} quiet panic=10"
load ${devtype} ${devnum}:${part} ${kernel_addr_r} /boot/Image
load ${devtype} ${devnum}:${part} ${fdt_addr_r} /boot/${fdtfile}
booti ${kernel_addr_r} - ${fdt_addr_r}
