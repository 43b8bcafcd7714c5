"""52-mkosi-initrd-prebuilt.install run on its own, the way kernel-install calls a plugin: what it
puts in the staging area for each layout, generator setting and configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.resources import kernel_install_dir

PLUGIN = kernel_install_dir() / "52-mkosi-initrd-prebuilt.install"
KVER = "7.0.0-16-synth"


class Machine:
    """A kernel directory with some variants' images, a configuration root and a staging area."""

    def __init__(self, tmp: Path, variants: dict[str, bool]) -> None:
        self.moddir = tmp / "usr/lib/modules" / KVER
        self.moddir.mkdir(parents=True)
        (self.moddir / "vmlinuz").write_bytes(b"kernel")
        for name, has_uki in variants.items():
            d = self.moddir / "mkosi-initrd" / name
            d.mkdir(parents=True)
            (d / "initrd.cpio.zst").write_bytes(f"initrd of {name}".encode())
            (d / "manifest.json").write_text("{}")
            if has_uki:
                (d / "uki.efi").write_bytes(f"uki of {name}".encode())
        self.conf = tmp / "etc/kernel"
        self.conf.mkdir(parents=True)
        self.staging = tmp / "staging"
        self.staging.mkdir()

    def add_microcode(self, name: str) -> None:
        (self.moddir / "mkosi-initrd" / name / "microcode.cpio").write_bytes(f"early cpio of {name}|".encode())

    def configure(self, text: str) -> None:
        (self.conf / "mkosi-initrd-prebuilt.conf").write_text(text)

    def run(self, *extra_args: str, command: str = "add", layout: str = "bls",
            generator: str = "mkosi-initrd-prebuilt", **env: str) -> subprocess.CompletedProcess:
        full_env = {
            "PATH": os.environ["PATH"],
            "KERNEL_INSTALL_LAYOUT": layout,
            "KERNEL_INSTALL_INITRD_GENERATOR": generator,
            "KERNEL_INSTALL_STAGING_AREA": str(self.staging),
            "KERNEL_INSTALL_CONF_ROOT": str(self.conf),
            "KERNEL_INSTALL_VERBOSE": "1",
            **env,
        }
        return subprocess.run([str(PLUGIN), command, KVER, "/boot/entry", str(self.moddir / "vmlinuz"), *extra_args],
                              capture_output=True, text=True, env=full_env)

    def staged(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.staging.iterdir())}


def test_bls_layout_stages_the_only_installed_variants_initrd(tmp_path):
    m = Machine(tmp_path, {"minimal": True})
    r = m.run()
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"initrd": "initrd of minimal"}


def test_bls_layout_stages_the_early_microcode_cpio_in_front_of_the_initrd_in_one_file(tmp_path):
    m = Machine(tmp_path, {"minimal": True})
    m.add_microcode("minimal")
    r = m.run()
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"initrd": "early cpio of minimal|initrd of minimal"}
    assert (m.staging / "initrd").stat().st_mode & 0o777 == 0o644


def test_uki_layout_with_microcode_stages_the_uki_alone(tmp_path):
    """The UKI carries the microcode in .ucode; nothing else is staged."""
    m = Machine(tmp_path, {"minimal": True})
    m.add_microcode("minimal")
    r = m.run(layout="uki")
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"uki.efi": "uki of minimal"}


def test_uki_layout_stages_the_variants_uki(tmp_path):
    m = Machine(tmp_path, {"minimal": True})
    assert m.run(layout="uki").returncode == 0
    assert m.staged() == {"uki.efi": "uki of minimal"}


def test_uki_layout_with_an_initrd_only_variant_stages_the_initrd_for_a_uki_generator(tmp_path):
    m = Machine(tmp_path, {"storage": False})
    r = m.run(layout="uki")
    assert r.returncode == 0
    assert m.staged() == {"initrd": "initrd of storage"}
    assert "variant storage has no UKI" in r.stderr


def test_another_uki_generator_gets_the_initrd_to_wrap(tmp_path):
    m = Machine(tmp_path, {"minimal": True})
    assert m.run(layout="uki", KERNEL_INSTALL_UKI_GENERATOR="ukify").returncode == 0
    assert m.staged() == {"initrd": "initrd of minimal"}


def test_empty_generator_setting_counts_as_ours(tmp_path):
    """kernel-install without install.conf.d support never sees the drop-in."""
    m = Machine(tmp_path, {"minimal": True})
    assert m.run(generator="").returncode == 0
    assert m.staged() == {"initrd": "initrd of minimal"}


@pytest.mark.parametrize("situation,args,env", [
    ("another generator is configured", (), {"generator": "dracut"}),
    ("the kernel image is already a UKI", (), {"KERNEL_INSTALL_IMAGE_TYPE": "uki"}),
    ("initrds were given on the command line", ("/some/initrd",), {}),
    ("the command is remove", (), {"command": "remove"}),
])
def test_plugin_steps_aside(tmp_path, situation, args, env):
    m = Machine(tmp_path, {"minimal": True})
    r = m.run(*args, **env)
    assert r.returncode == 0, (situation, r.stderr)
    assert m.staged() == {}, situation


def test_no_variant_installed_does_nothing_and_exits_0(tmp_path):
    m = Machine(tmp_path, {})
    m.configure("fallback=none\n")
    r = m.run()
    assert (r.returncode, m.staged()) == (0, {})
    assert f"no prebuilt image for {KVER}" in r.stdout


def test_no_variant_and_no_fallback_plugin_warns_but_succeeds(tmp_path):
    m = Machine(tmp_path, {})
    r = m.run(generator="mkosi-initrd-prebuilt")
    assert (r.returncode, m.staged()) == (0, {})
    if not any(Path(d).glob("*-dracut.install") for d in ("/etc/kernel/install.d", "/usr/lib/kernel/install.d")):
        assert "no 'dracut' kernel-install plugin: the boot entry gets no initrd" in r.stderr


def test_several_variants_installed_needs_a_choice(tmp_path):
    m = Machine(tmp_path, {"minimal": True, "storage": False})
    r = m.run()
    assert r.returncode == 1
    assert f"several prebuilt variants are installed for {KVER} (minimal storage); choose one with variant= in " \
           f"{m.conf}/mkosi-initrd-prebuilt.conf" in r.stderr
    assert m.staged() == {}
    m.configure('# prefer storage\nvariant = "storage minimal"\n')
    assert m.run().returncode == 0
    assert m.staged() == {"initrd": "initrd of storage"}


def test_configured_preference_skips_variants_not_installed(tmp_path):
    m = Machine(tmp_path, {"minimal": True})
    m.configure("variant=virt minimal\n")
    assert m.run().returncode == 0
    assert m.staged() == {"initrd": "initrd of minimal"}


def test_configured_variant_not_installed_is_reported_and_nothing_staged(tmp_path):
    m = Machine(tmp_path, {"minimal": True})
    m.configure("variant=virt\nfallback=none\n")
    r = m.run()
    assert (r.returncode, m.staged()) == (0, {})
    assert f"none of variant=virt is installed for {KVER} (installed: minimal)" in r.stderr


def test_plugin_is_posix_sh():
    for shell in ("dash", "sh"):
        if subprocess.run(["sh", "-c", f"command -v {shell}"], capture_output=True).returncode == 0:
            r = subprocess.run([shell, "-n", str(PLUGIN)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
