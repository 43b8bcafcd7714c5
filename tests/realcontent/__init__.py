"""Real content for the tests: Debian trixie binaries repackaged as a small Fedora-named RPM
distribution (mapping.toml), real root disks (plain ext4, LVM, LUKS2) and a dracut baseline."""
