"""UKI profiles and addons end to end: a fixture variant declaring an extra profile and an addon,
built with the real mkosi and ukify, read back with `ukify inspect` (independent of the builder's
reader), checked by `verify` and `inspect`, and booted under OVMF: as is (profile 0), with "@1",
which systemd-stub reads as the profile to boot, and from an ESP holding the addon in
<uki>.extra.d/, whose command line the stub appends. The kernel's own "Command line:" line shows
what the stub handed over."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.formats.uki import ADDONS_DIR, BASE_PROFILE_ID, uki_profiles, uki_sections
from mkosi_initrd_builder.building.secureboot import authenticode_sha256
from mkosi_initrd_builder.checking.qemu import boot, esp_drive
from mkosi_initrd_builder.util.fsutil import sha256_file
from tests.conftest import FIXTURE_VARIANTS, require_root, require_tools
from tests.support.bootmarker import fixture_probe, renamed_fixture_variant
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

VARIANT = "profiled"
# A word the kernel passes on untouched and that appears in no other command line of the test.
RESCUE_WORD = "fixture.profile=rescue"
ADDON_WORD = "fixture.addon=debug"
PROFILES = f'''
[[uki-profiles]]
id = "rescue"
title = "Fixture rescue profile"
kernel-command-line = "console=ttyS0 panic=-1 {RESCUE_WORD}"

[[uki-addons]]
name = "debug"
kernel-command-line = "{ADDON_WORD}"
'''


def profiled_variant(directory: Path) -> Path:
    """The minimal fixture variant with one extra UKI profile, the test's own."""
    text = renamed_fixture_variant((FIXTURE_VARIANTS / "minimal.toml").read_text(), "minimal", VARIANT)
    directory.mkdir()
    (directory / f"{VARIANT}.toml").write_text(text.replace("\n[files]", PROFILES + "\n[files]", 1))
    return directory


@pytest.fixture(scope="module")
def built(fixture_repo, tmp_path_factory):
    require_tools("mkosi", "ukify")
    require_root()
    tmp = tmp_path_factory.mktemp("profiles")
    variants = profiled_variant(tmp / "variants")
    out = tmp / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", variants])
    assert r.returncode == 0, r.stderr
    return out


def base_cmdline() -> str:
    text = (FIXTURE_VARIANTS / "minimal.toml").read_text()
    return re.search(r'^kernel-command-line = "(.*)"$', text, re.M).group(1)


def test_ukify_inspect_sees_both_profiles_in_order(built):
    """ukify's own reader, not ours: two .profile sections, the base's then the rescue one, and the
    rescue .cmdline after the rescue .profile."""
    out = subprocess.run([*_ukify(), "inspect", str(built / VARIANT / "uki.efi")],
                         capture_output=True, text=True, check=True).stdout
    order = [m.group(1) for m in re.finditer(r"^(\.profile|\.cmdline):$", out, re.M)]
    assert order == [".cmdline", ".profile", ".profile", ".cmdline"], out[:2000]
    assert f"ID={BASE_PROFILE_ID}" in out and "ID=rescue" in out and RESCUE_WORD in out


def _ukify() -> list[str]:
    import shutil
    return [shutil.which("ukify")]


def test_reader_and_manifest_agree_with_the_variant(built):
    profiles = uki_profiles(built / VARIANT / "uki.efi")
    assert [(p.fields["ID"], p.cmdline) for p in profiles] == [
        (BASE_PROFILE_ID, base_cmdline()), ("rescue", f"console=ttyS0 panic=-1 {RESCUE_WORD}")]
    assert profiles[1].fields["TITLE"] == "Fixture rescue profile"
    manifest = json.loads((built / VARIANT / "manifest.json").read_text())
    assert manifest["uki-profiles"] == [{"id": "rescue", "title": "Fixture rescue profile",
                                         "kernel-command-line": f"console=ttyS0 panic=-1 {RESCUE_WORD}"}]


def test_verify_checks_the_profiles_and_inspect_lists_them(built):
    r = run_cli(["verify", built / VARIANT])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   UKI profiles are the variant's" in r.stdout
    r = run_cli(["inspect", built / VARIANT, "--json"])
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    text = json.dumps(listed)
    assert '"ID": "rescue"' in text and RESCUE_WORD in text


def test_verify_refuses_a_uki_whose_profile_differs_from_the_manifest(built, tmp_path):
    import shutil
    copy = tmp_path / "out"
    shutil.copytree(built, copy)
    manifest = copy / VARIANT / "manifest.json"
    data = json.loads(manifest.read_text())
    data["uki-profiles"][0]["kernel-command-line"] = "console=ttyS0 something-else"
    manifest.write_text(json.dumps(data))
    r = run_cli(["verify", copy / VARIANT])
    assert r.returncode != 0
    assert "FAIL UKI profiles are the variant's" in r.stdout, r.stdout + r.stderr


@pytest.mark.boot
@pytest.mark.parametrize("append, word", [("", None), ("@1", RESCUE_WORD)], ids=["profile-0", "profile-1"])
def test_each_profile_boots_with_its_own_command_line(built, fixture_repo, tmp_path, append, word):
    require_tools("qemu-system-x86_64")
    console = tmp_path / "console.log"
    r = boot(kernel=built / VARIANT / "uki.efi", uefi=True, append=append, console_log=console,
             probe=fixture_probe(VARIANT, fixture_repo.kernel_version))
    assert r.ok, r.console_tail
    lines = [line for line in console.read_text(errors="replace").splitlines() if "Command line:" in line]
    assert lines, "the kernel printed no command line"
    if word is None:
        assert all(RESCUE_WORD not in line for line in lines), lines
        assert all(base_cmdline() in line for line in lines), lines
    else:
        assert all(word in line for line in lines), lines


def test_addon_is_built_listed_and_verified(built):
    addon = built / VARIANT / ADDONS_DIR / "debug.addon.efi"
    sections = uki_sections(addon)
    assert sections[".cmdline"].rstrip(b"\0").decode() == ADDON_WORD
    assert ".linux" not in sections and ".initrd" not in sections
    manifest = json.loads((built / VARIANT / "manifest.json").read_text())
    assert manifest["uki-addons"] == [{"name": "debug", "kernel-command-line": ADDON_WORD,
                                       "file": f"{ADDONS_DIR}/debug.addon.efi", "sha256": sha256_file(addon),
                                       "size": addon.stat().st_size,
                                       "authenticode-sha256": authenticode_sha256(addon)}]
    out = subprocess.run([*_ukify(), "inspect", str(addon)], capture_output=True, text=True, check=True).stdout
    assert "uki-addon" in out, out  # ukify's .sbat line for addons
    r = run_cli(["inspect", built / VARIANT])
    assert "debug.addon.efi" in r.stdout and ADDON_WORD in r.stdout, r.stdout


def test_verify_refuses_a_changed_or_stray_addon(built, tmp_path):
    import shutil
    copy = tmp_path / "out"
    shutil.copytree(built, copy)
    addon = copy / VARIANT / ADDONS_DIR / "debug.addon.efi"
    data = bytearray(addon.read_bytes())
    data[-1] ^= 0xFF
    addon.write_bytes(bytes(data))
    r = run_cli(["verify", copy / VARIANT])
    assert r.returncode != 0 and "FAIL UKI addon debug is the manifest's" in r.stdout, r.stdout
    shutil.copy(built / VARIANT / ADDONS_DIR / "debug.addon.efi", addon)
    (copy / VARIANT / ADDONS_DIR / "stray.addon.efi").write_bytes(b"x")
    r = run_cli(["verify", copy / VARIANT])
    assert r.returncode != 0 and f"FAIL {ADDONS_DIR}/ holds exactly the manifest's addons" in r.stdout, r.stdout


@pytest.mark.boot
def test_addon_from_the_esp_extends_the_command_line(built, fixture_repo, tmp_path):
    """The UKI as the removable-media boot path of a FAT ESP, its addon in <uki>.extra.d/ beside it."""
    import shutil
    require_tools("qemu-system-x86_64")
    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    shutil.copy(built / VARIANT / "uki.efi", esp / "EFI/BOOT/BOOTX64.EFI")
    shutil.copytree(built / VARIANT / ADDONS_DIR, esp / "EFI/BOOT/BOOTX64.EFI.extra.d")
    console = tmp_path / "console.log"
    r = boot(kernel=None, uefi=True, extra_args=esp_drive(esp), console_log=console,
             probe=fixture_probe(VARIANT, fixture_repo.kernel_version))
    assert r.ok, r.console_tail
    lines = [line for line in console.read_text(errors="replace").splitlines() if "Command line:" in line]
    assert lines and all(f"{base_cmdline()} {ADDON_WORD}" in line for line in lines), lines
