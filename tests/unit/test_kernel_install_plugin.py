"""52-mkosi-initrd-prebuilt.install run on its own, the way kernel-install calls a plugin: what it
puts in the staging area for each layout, generator setting and configuration."""

from __future__ import annotations

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
        # Only the system's tools on PATH (not this checkout's mkosi-initrd-build): a test that
        # wants a builder puts one in self.bin.
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.plugins: list[Path] = []
        self.tmpdir = tmp / "tmp"
        self.tmpdir.mkdir()

    def add_microcode(self, name: str) -> None:
        (self.moddir / "mkosi-initrd" / name / "microcode.cpio").write_bytes(f"early cpio of {name}|".encode())

    def configure(self, text: str) -> None:
        (self.conf / "mkosi-initrd-prebuilt.conf").write_text(text)

    def run(self, *extra_args: str, command: str = "add", layout: str = "bls",
            generator: str = "mkosi-initrd-prebuilt", **env: str) -> subprocess.CompletedProcess:
        full_env = {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "TMPDIR": str(self.tmpdir),
            # What newer kernel-install releases export: the plugins it runs.
            "KERNEL_INSTALL_PLUGINS": " ".join(map(str, self.plugins)) or " ",
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


# --- no prebuilt image: the fallback chain (fallback=, default "mkosi-initrd dracut") ---

# A stand-in for mkosi-initrd-build honouring the part of its command line the plugin uses: `build`
# writes OUTPUT/<variant>/initrd.cpio.zst and uki.efi, or, when the repository holds a file BROKEN,
# writes half an initrd and fails as a build with a missing package does.
FAKE_BUILDER = r"""#!/bin/sh
echo "$*" >> "${0%/*}/builder.calls"
while [ $# -gt 0 ]; do
    case "$1" in
        --repo) repo=$2; shift ;; --kernel-version) kver=$2; shift ;; --variants-dir) vdir=$2; shift ;;
        --variant) variant=$2; shift ;; --output) out=$2; shift ;;
    esac
    shift
done
[ -f "$vdir/$variant.toml" ] || { echo "mkosi-initrd-build: error: no variant file $vdir/$variant.toml" >&2; exit 1; }
mkdir -p "$out/$variant"
if [ -f "$repo/BROKEN" ]; then
    printf 'half an' > "$out/$variant/initrd.cpio.zst"
    echo "mkosi-initrd-build: error: package busybox is not in the repository $repo" >&2
    exit 1
fi
echo "local initrd of $variant for $kver from $repo" > "$out/$variant/initrd.cpio.zst"
echo "local uki of $variant" > "$out/$variant/uki.efi"
"""

# A stand-in for dracut's 50-dracut.install, as it treats its arguments and environment: nothing
# unless the generator is dracut (or unset), nothing with initrds on the command line, else the
# initrd in the staging area; it fails when the file FAIL is next to it.
FAKE_DRACUT = r"""#!/bin/sh
[ "$1" = add ] || exit 0
[ -z "$KERNEL_INSTALL_INITRD_GENERATOR" ] || [ "$KERNEL_INSTALL_INITRD_GENERATOR" = dracut ] || exit 0
[ $# -le 4 ] || exit 0
[ -f "${0%/*}/FAIL" ] && { echo "dracut: cannot install kernel modules" >&2; exit 1; }
echo "dracut initrd for $2" > "$KERNEL_INSTALL_STAGING_AREA/initrd"
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


class FallbackMachine(Machine):
    """A machine without this kernel's image: the variant files -common installs, a local repository,
    and optionally the builder and dracut's plugin."""

    def __init__(self, tmp: Path, *, builder: bool = True, dracut: bool = True, variants=("minimal",)) -> None:
        super().__init__(tmp, {})
        self.variants_dir = tmp / "usr/share/mkosi-initrd-initrd/variants"
        self.variants_dir.mkdir(parents=True)
        for name in variants:
            (self.variants_dir / f"{name}.toml").write_text(f'summary = "{name}"\n')
        self.repo = tmp / "var/lib/mkosi-initrd-initrd/repo"
        (self.repo / "repodata").mkdir(parents=True)
        (self.repo / "repodata/repomd.xml").write_text("<repomd/>")
        if builder:
            executable(self.bin / "mkosi-initrd-build", FAKE_BUILDER)
        self.dracut = tmp / "usr/lib/kernel/install.d/50-dracut.install"
        if dracut:
            self.plugins.append(executable(self.dracut, FAKE_DRACUT))
        self.settings = f"variants_dir={self.variants_dir}\nlocal_repo={self.repo}\n"
        self.configure(self.settings)

    def configure_more(self, text: str) -> None:
        self.configure(self.settings + text)

    def builder_calls(self) -> list[str]:
        calls = self.bin / "builder.calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def leftovers(self) -> list[str]:
        """Files the plugin left behind: anything in the staging area and in $TMPDIR."""
        return sorted(str(p.relative_to(self.staging.parent)) for d in (self.staging, self.tmpdir) for p in d.rglob("*"))


def test_local_build_of_the_installed_variant_file_makes_the_initrd(tmp_path):
    m = FallbackMachine(tmp_path)
    r = m.run()
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"initrd": f"local initrd of minimal for {KVER} from {m.repo}\n"}
    assert m.builder_calls() == [f"build --repo {m.repo} --kernel-version {KVER} --variants-dir {m.variants_dir} "
                                 f"--variant minimal --output {m.tmpdir}/" + m.builder_calls()[0].rsplit("/", 1)[1]]
    assert f"no prebuilt image for {KVER}: the initrd was made by mkosi-initrd (variant " \
           f"{m.variants_dir}/minimal.toml, from {m.repo})" in r.stdout
    assert m.leftovers() == ["staging/initrd"]  # the build's work directory is gone


def test_local_build_with_the_uki_layout_stages_the_uki(tmp_path):
    m = FallbackMachine(tmp_path)
    assert m.run(layout="uki").returncode == 0
    assert m.staged() == {"uki.efi": "local uki of minimal\n"}


def test_failed_local_build_stages_nothing_and_dracut_makes_the_initrd(tmp_path):
    m = FallbackMachine(tmp_path)
    (m.repo / "BROKEN").touch()
    r = m.run()
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"initrd": f"dracut initrd for {KVER}\n"}
    assert "package busybox is not in the repository" in r.stderr  # the builder's own error, passed on
    assert f"mkosi-initrd failed: mkosi-initrd-build failed for {m.variants_dir}/minimal.toml with " \
           f"local_repo={m.repo}" in r.stderr
    assert f"the initrd was made by dracut ({m.dracut})" in r.stdout
    assert m.leftovers() == ["staging/initrd"]  # no half initrd, no work directory


def test_both_failing_fails_kernel_install_with_both_reasons_and_stages_nothing(tmp_path):
    m = FallbackMachine(tmp_path)
    (m.repo / "BROKEN").touch()
    (m.dracut.parent / "FAIL").touch()
    r = m.run()
    assert r.returncode == 1
    assert m.leftovers() == []
    assert "mkosi-initrd failed: mkosi-initrd-build failed" in r.stderr
    assert f"dracut failed: {m.dracut} failed (exit status 1)" in r.stderr
    assert f"no generator of fallback=mkosi-initrd dracut (in {m.conf}/mkosi-initrd-prebuilt.conf) made an " \
           f"initrd for {KVER} (mkosi-initrd, dracut failed)" in r.stderr


def test_without_the_builder_the_local_build_is_skipped_for_dracut(tmp_path):
    m = FallbackMachine(tmp_path, builder=False)
    r = m.run()
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"initrd": f"dracut initrd for {KVER}\n"}
    assert "skipping mkosi-initrd: mkosi-initrd-build is not installed (package python3-mkosi-initrd-builder)" \
        in r.stderr


def test_a_missing_local_repository_is_skipped_naming_the_setting(tmp_path):
    m = FallbackMachine(tmp_path)
    m.configure_more(f"local_repo={tmp_path}/nowhere\n")
    r = m.run()
    assert r.returncode == 0, r.stderr
    assert m.staged() == {"initrd": f"dracut initrd for {KVER}\n"}
    assert f"skipping mkosi-initrd: local_repo={tmp_path}/nowhere (in {m.conf}/mkosi-initrd-prebuilt.conf) " \
           "is no repository" in r.stderr
    assert m.builder_calls() == []


def test_the_chain_order_is_the_configured_one(tmp_path):
    m = FallbackMachine(tmp_path)
    m.configure_more("fallback=dracut mkosi-initrd\n")
    r = m.run()
    assert m.staged() == {"initrd": f"dracut initrd for {KVER}\n"}, r.stderr
    assert m.builder_calls() == []
    m.configure_more("fallback=none dracut\n")
    (m.staging / "initrd").unlink()
    r = m.run()
    assert (r.returncode, m.staged()) == (0, {})
    assert f"no initrd for {KVER} ('none')" in r.stdout


def test_nothing_available_installs_the_kernel_without_initrd_and_says_so(tmp_path):
    m = FallbackMachine(tmp_path, builder=False, dracut=False)
    r = m.run()
    assert (r.returncode, m.staged()) == (0, {})
    assert "skipping dracut: no 'dracut' kernel-install plugin" in r.stderr
    assert "no generator of fallback=mkosi-initrd dracut" in r.stderr and "the boot entry gets no initrd" in r.stderr


def test_a_generator_plugin_that_stages_nothing_counts_as_failed(tmp_path):
    m = FallbackMachine(tmp_path, builder=False)
    executable(m.dracut, "#!/bin/sh\nexit 0\n")
    r = m.run()
    assert r.returncode == 1
    assert f"dracut failed: {m.dracut} staged no initrd" in r.stderr


@pytest.mark.parametrize("setting,expected", [
    ("", None),                         # two variant files, nothing installed elsewhere: ambiguous
    ("variant=virt storage\n", "storage"),
    ("variant=virt\n", None),
])
def test_the_local_variant_follows_variant_setting(tmp_path, setting, expected):
    m = FallbackMachine(tmp_path, variants=("minimal", "storage"))
    m.configure_more(setting)
    r = m.run()
    if expected:
        assert m.staged() == {"initrd": f"local initrd of {expected} for {KVER} from {m.repo}\n"}, r.stderr
    else:
        assert m.builder_calls() == [] and m.staged() == {"initrd": f"dracut initrd for {KVER}\n"}
        assert "skipping mkosi-initrd:" in r.stderr and "variant=" in r.stderr


def test_without_variant_setting_the_variant_installed_for_other_kernels_is_built(tmp_path):
    m = FallbackMachine(tmp_path, variants=("minimal", "storage"))
    other = tmp_path / "usr/lib/modules/6.9.0-1-synth/mkosi-initrd/storage"
    other.mkdir(parents=True)
    (other / "initrd.cpio.zst").write_bytes(b"older kernel's image")
    r = m.run()
    assert m.staged() == {"initrd": f"local initrd of storage for {KVER} from {m.repo}\n"}, r.stderr


def test_every_setting_the_plugin_reads_is_declared_in_the_shipped_file_and_documented():
    """The settings are declared once, as commented-out defaults in mkosi-initrd-prebuilt.conf."""
    import re

    read = set(re.findall(r"conf_get ([a-z_]+)", PLUGIN.read_text()))
    shipped = set(re.findall(r"^#([a-z_]+)=", (kernel_install_dir() / "mkosi-initrd-prebuilt.conf").read_text(),
                             re.MULTILINE))
    readme = (kernel_install_dir().parent / "README.md").read_text()
    assert read == shipped == {"variant", "fallback", "variants_dir", "local_repo"}
    assert all(f"`{key}=" in readme for key in read)
