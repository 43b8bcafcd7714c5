"""UKI profiles end to end: a fixture variant declaring an extra profile, built with the real mkosi
and ukify, read back with `ukify inspect` (independent of the builder's reader), checked by
`verify` and `inspect`, and booted under OVMF twice: as is (profile 0) and with "@1", which
systemd-stub reads as the profile to boot. The kernel's own "Command line:" line shows which
profile's .cmdline the stub handed over."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.formats.uki import BASE_PROFILE_ID, uki_profiles
from mkosi_initrd_builder.checking.qemu import boot
from tests.conftest import FIXTURE_VARIANTS, require_root, require_tools
from tests.support.bootmarker import fixture_probe
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

VARIANT = "profiled"
# A word the kernel passes on untouched and that appears in no other command line of the test.
RESCUE_WORD = "fixture.profile=rescue"
PROFILES = f'''
[[uki-profiles]]
id = "rescue"
title = "Fixture rescue profile"
kernel-command-line = "console=ttyS0 panic=-1 {RESCUE_WORD}"
'''


def profiled_variant(directory: Path) -> Path:
    """The minimal fixture variant with one extra UKI profile, the test's own."""
    text = (FIXTURE_VARIANTS / "minimal.toml").read_text()
    directory.mkdir()
    (directory / f"{VARIANT}.toml").write_text(text + PROFILES)
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
