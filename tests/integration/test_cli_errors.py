"""Bad input gets one line naming the thing at fault, never a traceback."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import FIXTURE_VARIANTS, PRODUCT_VARIANTS, require_tools
from tests.support.cli import run_cli


def error_line(r) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("mkosi-initrd-build: ")]
    assert lines, r.stderr
    return lines[0]


def build(repo, output, *extra, variants=FIXTURE_VARIANTS, kver="0.0.0-repository-less", env=None):
    """`build`; tests against the fixture repository pass its kernel (kver=fixture_repo.kernel_version),
    so the error under test is never a kernel mismatch."""
    return run_cli(["build", "--repo", repo, "--kernel-version", kver, "--output", output,
                    "--variants-dir", variants, *extra], env=env)


def test_missing_repo(tmp_path):
    line = error_line(build(tmp_path / "nope", tmp_path / "out"))
    assert line == f"mkosi-initrd-build: error: repository {tmp_path / 'nope'}: does not exist"


def test_repo_without_repodata(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/a.rpm").write_bytes(b"")
    line = error_line(build(tmp_path / "repo", tmp_path / "out"))
    assert line == (f"mkosi-initrd-build: error: repository {tmp_path / 'repo'}: no repodata/repomd.xml "
                    "(run createrepo_c on it)")


def test_empty_repo(tmp_path):
    require_tools("createrepo_c")
    (tmp_path / "repo").mkdir()
    import subprocess
    subprocess.run(["createrepo_c", "--quiet", tmp_path / "repo"], check=True)
    line = error_line(build(tmp_path / "repo", tmp_path / "out"))
    assert line == f"mkosi-initrd-build: error: repository {tmp_path / 'repo'}: holds no packages"


def test_unknown_variant(tmp_path, fixture_repo):
    line = error_line(build(fixture_repo.path, tmp_path / "out", "--variant", "nope", kver=fixture_repo.kernel_version))
    assert line == (f"mkosi-initrd-build: error: {FIXTURE_VARIANTS}: unknown variant 'nope' "
                    "(available: minimal, storage)")


def test_invalid_variant_names_file_and_key(tmp_path, fixture_repo):
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "bad.toml").write_text('summary = "s"\ndescription = "d"\nformats = ["initrd", "iso"]\n')
    line = error_line(build(fixture_repo.path, tmp_path / "out", variants=variants, kver=fixture_repo.kernel_version))
    assert line == f"mkosi-initrd-build: error: {variants / 'bad.toml'}: formats: unknown format 'iso' (allowed: initrd, microcode, uki)"


@pytest.mark.parametrize("extra, key, detail", [
    ('[mkosi.Content]\nWithDocs = "no\\rLocalMirror=https://example.org/"\n', "mkosi.Content.WithDocs",
     "contains the control or line-break character(s) '\\r', which mkosi's configuration parser (it reads one "
     "setting per line) does not take"),
    ('kernel-command-line = "@/etc/shadow"\n', "kernel-command-line",
     "must not start with '@': ukify reads '@PATH' as the name of a file whose contents become the command line"),
    ('kernel-command-line = "quiet\\u0000rd.break"\n', "kernel-command-line",
     "contains the control or line-break character(s) '\\x00', which a kernel command line (one line) does not "
     "take"),
])
def test_hostile_variant_value_is_refused_naming_file_and_key(tmp_path, fixture_repo, extra, key, detail):
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "bad.toml").write_text('summary = "s"\ndescription = "d"\nformats = ["initrd", "uki"]\n' + extra)
    r = build(fixture_repo.path, tmp_path / "out", variants=variants, kver=fixture_repo.kernel_version)
    assert r.returncode == 1
    assert error_line(r) == f"mkosi-initrd-build: error: {variants / 'bad.toml'}: {key}: {detail}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variants"]  # no output, not even a partial one


def test_unwritable_output(tmp_path, fixture_repo):
    (tmp_path / "file").write_text("")
    line = error_line(build(fixture_repo.path, tmp_path / "file" / "out", kver=fixture_repo.kernel_version))
    assert line.startswith(f"mkosi-initrd-build: error: output {tmp_path / 'file' / 'out'}: cannot create")


def test_mkosi_missing_hints_make_setup(tmp_path, fixture_repo):
    empty = tmp_path / "tools"
    (empty / "bin").mkdir(parents=True)
    r = build(fixture_repo.path, tmp_path / "out", kver=fixture_repo.kernel_version, env={"PATH": f"{empty / 'bin'}:/usr/bin:/bin"})
    if shutil.which("mkosi", path="/usr/bin:/bin"):
        pytest.skip("a system mkosi is installed in /usr/bin; cannot hide it")
    assert error_line(r) == "mkosi-initrd-build: error: mkosi not found"
    assert "mkosi-initrd-build: hint: run 'make setup' to install the tools" in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run_cli(["--debug", "build", "--repo", tmp_path / "nope", "--kernel-version", "1", "--output",
                 tmp_path / "out", "--variants-dir", FIXTURE_VARIANTS])
    assert r.returncode == 1
    assert "Traceback" in r.stderr


@pytest.mark.parametrize("variant", ["virt", "generic"])
def test_mkosi_accepts_rendered_product_variant(tmp_path, variant):
    """mkosi itself parses what we render (settings, sections, include order): `mkosi summary`."""
    require_tools("mkosi")
    from mkosi_initrd_builder.building.build import write_sandbox_tree
    from mkosi_initrd_builder.building.mkosi_config import MkosiPaths, render_variant
    from mkosi_initrd_builder.util.run import run
    from mkosi_initrd_builder.util.tools import find_tool
    from mkosi_initrd_builder.building.variants import load_variant

    dirs = {k: tmp_path / k for k in ("repo", "kernel", "sandbox", "cache", "ws", "out", "config")}
    for d in dirs.values():
        d.mkdir()
    dirs["sandbox"].rmdir()
    write_sandbox_tree(dirs["sandbox"], dirs["repo"], "rawhide")
    paths = MkosiPaths(repo=dirs["repo"], kernel_tree=dirs["kernel"], files_tree=dirs["kernel"].parent / "files", sandbox_tree=dirs["sandbox"],
                       package_cache=dirs["cache"], workspace=dirs["ws"], output_dir=dirs["out"],
                       config_dir=dirs["config"])
    r = render_variant(load_variant(PRODUCT_VARIANTS / f"{variant}.toml"), release="rawhide",
                       source_date_epoch=1, paths=paths)
    r.write(dirs["config"])
    out = run([find_tool("mkosi"), *r.argv, "summary"], capture=True).stdout.decode()
    assert f"Local Mirror (build): {dirs['repo'].as_uri()}" in out
    extra = out.split("Extra Trees:", 1)[1].split("\n\n", 1)[0]
    assert str(dirs["kernel"]) in extra and "mkosi-initrd/mkosi.extra" in extra
    assert "Output Format: cpio" in out and "Manifest Formats: json" in out
    for pkg in ("systemd", "udev", "systemd-cryptsetup", "lvm2"):
        assert f" {pkg}\n" in out
