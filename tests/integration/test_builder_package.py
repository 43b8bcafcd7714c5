"""The builder installed the way users get it, with no checkout beside it: a pip install into a fresh
venv run from another directory, and the RPMs of spec/mkosi-initrd-builder.spec (`make rpm-builder`)
read back with rpm, checked with rpmlint and installed into a scratch root."""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_VARIANTS, TOOLS, TOP, require_root, require_tools

pytestmark = pytest.mark.integration

MAKE_BUILDER_RPM = TOP / "tools" / "make-builder-rpm.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
# Where Debian's python3 looks, and what make-builder-rpm.sh defines %python3_sitelib as here.
DEBIAN_SITELIB = "/usr/lib/python3/dist-packages"
PLUGIN_PATH = "/usr/lib/koji-builder-plugins/mkosi_initrd.py"
PLUGIN_CONFIG = "/etc/kojid/plugins/mkosi_initrd.conf"
PACKAGER = "Fixture Packager <fixture@example.org>"


def shipped_data() -> list[str]:
    """The files of spec/ the builder reads at run time, relative to spec/ (setup.cfg's globs)."""
    spec = TOP / "spec"
    files = [spec / "mkosi-initrd-initrd.spec.in", *(spec / "kernel-install").iterdir(),
             *(spec / "variants").glob("*.toml")]
    return sorted(str(p.relative_to(spec)) for p in files)


def clean_env(path: str) -> dict[str, str]:
    """The environment of a user with no checkout: tools on PATH, nothing pointing into TOP."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKOSI_INITRD_TOOLS", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = path
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links: the install is offline
    return env


# --- pip install into a fresh venv --------------------------------------------------------------

@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory):
    """The builder installed (not editable) into a fresh venv with the system's site packages, as
    the README says; its data must come with it."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"needs {SYSTEM_PYTHON}")
    require_tools("git")
    base = tmp_path_factory.mktemp("venv")
    venv = base / "venv"
    env = clean_env("/usr/bin:/bin")
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True, env=env)
    # A copy of the files git tracks, so the build neither reads nor writes the checkout.
    src = base / "src"
    tracked = subprocess.run(["git", "-C", str(TOP), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, tracked):
        if (TOP / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(TOP / rel, src / rel)
    r = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "--disable-pip-version-check", "-q", str(src)],
                       capture_output=True, text=True, env=env, cwd=base)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(src)
    return venv


def run_installed(venv: Path, args, cwd: Path) -> subprocess.CompletedProcess:
    env = clean_env(f"{venv / 'bin'}:{TOOLS / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin")
    return subprocess.run([str(venv / "bin/mkosi-initrd-build"), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=900)


def test_pip_installed_module_and_data_live_in_the_venv(installed_venv, tmp_path):
    r = subprocess.run([str(installed_venv / "bin/python"), "-c",
                        "import mkosi_initrd_builder as m; from mkosi_initrd_builder.util.resources import "
                        "product_variants_dir, spec_template; print(m.__file__); print(product_variants_dir()); "
                        "print(spec_template())"],
                       capture_output=True, text=True, env=clean_env("/usr/bin:/bin"), cwd=tmp_path, check=True)
    module, variants, template = (Path(line) for line in r.stdout.splitlines())
    for path in (module, variants, template):
        assert path.is_relative_to(installed_venv), path
    assert sorted(p.name for p in variants.glob("*.toml")) == sorted(
        p.name for p in (TOP / "spec/variants").glob("*.toml"))
    assert template.read_bytes() == (TOP / "spec/mkosi-initrd-initrd.spec.in").read_bytes()


def test_pip_installed_builder_defaults_to_its_own_product_variants(installed_venv, tmp_path, fixture_repo):
    r = run_installed(installed_venv, ["build", "--repo", fixture_repo.path, "--kernel-version",
                                       fixture_repo.kernel_version, "--output", tmp_path / "out",
                                       "--variant", "no-such-variant"], cwd=tmp_path)
    assert r.returncode == 1
    products = ", ".join(sorted(p.stem for p in (TOP / "spec/variants").glob("*.toml")))
    assert f"unknown variant 'no-such-variant' (available: {products})" in r.stderr
    assert str(installed_venv) in r.stderr and "variants directory does not exist" not in r.stderr


def test_pip_installed_builder_renders_bumps_and_builds_outside_the_checkout(installed_venv, tmp_path,
                                                                              fixture_repo):
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    work = tmp_path / "elsewhere"
    work.mkdir()
    variants = work / "variants"
    shutil.copytree(FIXTURE_VARIANTS, variants)
    repo, kver = fixture_repo.path, fixture_repo.kernel_version
    spec = work / "dist-git" / "mkosi-initrd-initrd.spec"

    r = run_installed(installed_venv, ["spec", "--kernel-version", kver, "--repo", repo, "--variants-dir", variants,
                                       "--packager", PACKAGER, "--date", "2024-01-01", "--output", spec], work)
    assert r.returncode == 0, r.stderr
    # The template and the kernel-install Sources came from the installed package data.
    assert "%global kernel_uname" in spec.read_text()
    for name in ("52-mkosi-initrd-prebuilt.install", "60-mkosi-initrd-prebuilt.conf", "mkosi-initrd-prebuilt.conf"):
        assert (spec.parent / name).read_bytes() == (TOP / "spec/kernel-install" / name).read_bytes()

    r = run_installed(installed_venv, ["bump", "--spec", spec, "--kernel-version", kver, "--repo", repo,
                                       "--variants-dir", variants, "--packager", PACKAGER, "--date", "2024-01-02",
                                       "--message", "Rebuilt by the installed builder"], work)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^%global build_counter\s+2$", spec.read_text(), re.MULTILINE)

    r = run_installed(installed_venv, ["build", "--repo", repo, "--kernel-version", kver, "--output", work / "out",
                                       "--variants-dir", variants, "--variant", "minimal"], work)
    assert r.returncode == 0, r.stderr
    assert (work / "out/minimal/initrd.cpio.zst").stat().st_size > 0
    assert (work / "out/minimal/manifest.json").is_file()


# --- the RPMs ---------------------------------------------------------------------------------

def make_builder_rpms(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MAKE_BUILDER_RPM), str(out)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def builder_rpms(tmp_path_factory):
    require_tools("rpmbuild", "rpmspec", "rpmlint", "git")
    out = tmp_path_factory.mktemp("rpm-builder") / "out"
    r = make_builder_rpms(out)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    rpms = {}
    for path in sorted((out / "RPMS").rglob("*.rpm")):
        name = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}", str(path)], capture_output=True,
                              text=True, check=True).stdout
        rpms[name] = path
    return out, rpms


def rpm_query(path: Path, *args: str) -> list[str]:
    return subprocess.run(["rpm", "-qp", "--nosignature", *args, str(path)], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_builder_spec_makes_the_python_package_and_the_plugin(builder_rpms):
    out, rpms = builder_rpms
    assert sorted(rpms) == ["koji-builder-plugin-mkosi-initrd", "python3-mkosi-initrd-builder"]
    for path in rpms.values():
        assert rpm_query(path, "--qf", "%{ARCH}") == ["noarch"]
    assert len(list((out / "SRPMS").glob("mkosi-initrd-builder-*.src.rpm"))) == 1


def test_python_package_ships_the_module_its_data_and_the_command(builder_rpms):
    _, rpms = builder_rpms
    files = set(rpm_query(rpms["python3-mkosi-initrd-builder"], "-l"))
    data = f"{DEBIAN_SITELIB}/mkosi_initrd_builder/data"
    for rel in shipped_data():
        assert f"{data}/{rel}" in files
    assert f"{DEBIAN_SITELIB}/mkosi_initrd_builder/util/resources.py" in files
    assert "/usr/bin/mkosi-initrd-build" in files
    # Only what the builder reads: the spec of the builder itself and the READMEs stay in the tree.
    assert not {f for f in files if f.startswith(data + "/") and f.endswith((".spec", ".md", "rpmlintrc"))}


def test_python_package_provides_what_the_image_spec_buildrequires(builder_rpms):
    _, rpms = builder_rpms
    pkg = rpms["python3-mkosi-initrd-builder"]
    version = rpm_query(pkg, "--qf", "%{VERSION}-%{RELEASE}")[0]
    assert f"mkosi-initrd-builder = {version}" in rpm_query(pkg, "--provides")
    requires = {line.split()[0] for line in rpm_query(pkg, "--requires")}
    assert {"mkosi", "systemd-ukify", "python3-pefile", "python3-dnf", "/usr/bin/python3"} <= requires


def test_plugin_package_installs_into_kojids_plugin_path(builder_rpms):
    _, rpms = builder_rpms
    pkg = rpms["koji-builder-plugin-mkosi-initrd"]
    files = dict(line.rsplit(" ", 1) for line in rpm_query(pkg, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"))
    assert set(files) == {PLUGIN_PATH, PLUGIN_CONFIG}
    assert "c" in files[PLUGIN_CONFIG] and "n" in files[PLUGIN_CONFIG]  # %config(noreplace)
    requires = {line.split()[0] for line in rpm_query(pkg, "--requires")}
    assert {"python3-mkosi-initrd-builder", "koji-builder"} <= requires


def test_builder_rpmlint_reports_no_errors(builder_rpms):
    out, _ = builder_rpms
    log = (out / "rpmlint.log").read_text()
    assert re.search(r"3 packages and 1 specfiles checked; 0 errors,", log), log
    assert "unused-rpmlintrc-filter" not in log


def test_builder_rpms_are_byte_reproducible(builder_rpms, tmp_path):
    out, _ = builder_rpms
    first = tmp_path / "first"
    shutil.copytree(out, first)
    r = make_builder_rpms(out)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.suffix in (".rpm", ".gz"))
    assert names and sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".rpm", ".gz")) == names
    _, mismatch, errors = filecmp.cmpfiles(first, out, names, shallow=False)
    assert not mismatch and not errors


def test_rpm_installed_builder_finds_its_data_with_importlib_resources(builder_rpms, tmp_path):
    require_root()
    _, rpms = builder_rpms
    root = tmp_path / "root"
    subprocess.run(["rpm", "--root", str(root), "--define", "_dbpath /usr/lib/sysimage/rpm", "--nodeps",
                    "--nosignature", "-i", *map(str, rpms.values())], check=True, capture_output=True)
    sitelib = root / DEBIAN_SITELIB.lstrip("/")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from importlib.resources import files\n"
        "import mkosi_initrd_builder\n"
        "data = files('mkosi_initrd_builder.data')\n"
        "print(mkosi_initrd_builder.__file__)\n"
        "print(*sorted(p.name for p in (data / 'variants').iterdir()))\n"
        "print((data / 'mkosi-initrd-initrd.spec.in').read_text().count('#@foreach-variant'))\n"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-I", "-c", probe, str(sitelib)], capture_output=True, text=True,
                       cwd=tmp_path, check=True)
    module, variants, loops = r.stdout.splitlines()
    assert Path(module).is_relative_to(sitelib)
    assert variants.split() == sorted(p.name for p in (TOP / "spec/variants").glob("*.toml"))
    assert int(loops) == (TOP / "spec/mkosi-initrd-initrd.spec.in").read_text().count("#@foreach-variant")
    assert (root / PLUGIN_PATH.lstrip("/")).is_file() and (root / PLUGIN_CONFIG.lstrip("/")).is_file()
    # The installed command runs with the scratch root's modules.
    env = clean_env("/usr/bin:/bin") | {"PYTHONPATH": str(sitelib)}
    r = subprocess.run([str(root / "usr/bin/mkosi-initrd-build"), "--version"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("mkosi-initrd-build "), r.stderr
