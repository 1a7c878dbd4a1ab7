################################################################################
#
# hearthd
#
################################################################################

# The source tarball is made from this repository by image/scripts/make-source, which
# writes target/dist/hearthd-$(HEARTHD_VERSION).tar.gz. The download step copies it and,
# like for every cargo package, vendors the crates listed in Cargo.lock into the archive
# (SITE_METHOD=local would skip that vendoring, so it is not used).
HEARTHD_VERSION = 0.1.0
HEARTHD_SITE = $(BR2_EXTERNAL_HEARTH_PATH)/../target/dist
HEARTHD_SITE_METHOD = file
HEARTHD_LICENSE = Apache-2.0
HEARTHD_CARGO_BUILD_OPTS = --package hearthd --package hearth-inference

define HEARTHD_USERS
	hearth -1 hearth -1 * /var/lib/hearth - - Hearth daemon
endef

define HEARTHD_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/hearthd \
		$(TARGET_DIR)/usr/bin/hearthd
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/hearth-inference \
		$(TARGET_DIR)/usr/bin/hearth-inference
endef

$(eval $(cargo-package))
