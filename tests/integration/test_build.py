"""The builder end to end with the real mkosi, ukify, cpio, zstd and QEMU on fixture content."""

from __future__ import annotations

import json
import lzma
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkosi_initrd_builder.checking.cpio import read_cpio
from mkosi_initrd_builder.building.formats.uki import uki_sections
from mkosi_initrd_builder.building.variants import load_variant
from mkosi_initrd_builder.util.compress import decompress_bytes
from tests.conftest import FIXTURE_VARIANTS, TOP, require_root, require_tools
from tests.support.bootmarker import BOOT_MARKER, fixture_marker
from tests.support.cli import run_cli
from tests.support.fixtures import build_rpm_from_spec, make_repo

pytestmark = pytest.mark.integration


def build_args(repo, kver, output, *extra):
    return ["build", "--repo", repo, "--kernel-version", kver, "--output", output,
            "--variants-dir", FIXTURE_VARIANTS, *extra]


@pytest.fixture(scope="module")
def built(fixture_repo, tmp_path_factory):
    """Both fixture variants, built once for this module with --jobs 2."""
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    out = tmp_path_factory.mktemp("build") / "out"
    r = run_cli(build_args(fixture_repo.path, fixture_repo.kernel_version, out, "--jobs", "2"))
    assert r.returncode == 0, r.stderr
    return out


def test_build_writes_initrd_uki_and_manifest(built, fixture_repo):
    assert sorted(p.name for p in built.iterdir()) == ["minimal", "storage"]
    assert sorted(p.name for p in (built / "minimal").iterdir()) == ["initrd.cpio.zst", "manifest.json", "uki.efi"]
    assert sorted(p.name for p in (built / "storage").iterdir()) == ["initrd.cpio.zst", "manifest.json"]
    m = json.loads((built / "minimal/manifest.json").read_text())
    assert m["variant"] == "minimal"
    assert m["kernel"]["version"] == fixture_repo.kernel_version
    assert m["kernel"]["packages"] and all(p.startswith("kernel-core-") for p in m["kernel"]["packages"])
    names = {p.rsplit("-", 2)[0] for p in m["packages"]}
    assert {"initrd-init", "kmod", "busybox", "filesystem", "basesystem"} <= names
    assert m["source-date-epoch"] == fixture_repo.source_date_epoch
    assert len(m["inputs-hash"]) == 64
    assert set(m["tools"]) == {"mkosi", "ukify", "builder"}
    for name, meta in m["outputs"].items():
        assert meta["size"] == (built / "minimal" / name).stat().st_size


def test_kernel_modules_filtered_and_dependencies_regenerated_in_image(built, fixture_repo):
    kver = fixture_repo.kernel_version
    entries = {e.name: e for e in read_cpio(built / "minimal/initrd.cpio.zst")}
    modules = sorted(n.rsplit("/", 1)[-1] for n in entries if n.endswith(".ko"))
    # ext4 plus its depends= and softdep= closure, nothing else from kernel-core
    assert modules == ["crc16.ko", "crc32c_generic.ko", "ext4.ko", "jbd2.ko", "mbcache.ko"]
    dep = entries[f"usr/lib/modules/{kver}/modules.dep"].data.decode()
    ext4_line = next(line for line in dep.splitlines() if line.startswith("kernel/fs/ext4/ext4.ko:"))
    assert "jbd2.ko" in ext4_line and "mbcache.ko" in ext4_line
    assert not any(n.startswith(f"usr/lib/modules/{kver}/vmlinuz") for n in entries)
    storage = sorted(e.name.rsplit("/", 1)[-1] for e in read_cpio(built / "storage/initrd.cpio.zst")
                     if e.name.endswith(".ko"))
    assert "squashfs.ko" not in storage and "vfat.ko" in storage and "fat.ko" in storage


def test_uki_carries_kernel_initrd_stub_sections(built, fixture_repo):
    require_tools("ukify")
    sections = uki_sections(built / "minimal/uki.efi")
    assert sections[".initrd"] == (built / "minimal/initrd.cpio.zst").read_bytes()
    assert sections[".uname"].rstrip(b"\0").decode() == fixture_repo.kernel_version
    assert sections[".cmdline"].rstrip(b"\0").decode() == "console=ttyS0 panic=-1"
    # The distribution's os-release as shipped, without an IMAGE_ID of ours: systemd's resume
    # generator compares ID and IMAGE_ID with the HibernateLocation the host wrote.
    assert b"IMAGE_ID" not in sections[".osrel"] and b"ID=" in sections[".osrel"]
    # the real inspector agrees
    r = subprocess.run([shutil.which("ukify"), "inspect",
                        built / "minimal/uki.efi"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for s in (".linux", ".initrd", ".cmdline", ".osrel", ".uname"):
        assert s in r.stdout


def test_verify_and_inspect(built):
    r = run_cli(["verify", built / "minimal"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
    r = run_cli(["inspect", "--json", built / "minimal"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert "ext4.ko" in info["kernel-modules"]
    assert dict(info["uki-sections"])[".linux"] > 1_000_000
    sizes = [s for _, s in info["largest-files"]]
    assert sizes == sorted(sizes, reverse=True)
    # The image's big files: kmod (the real one, Debian trixie's) links libcrypto for module
    # signatures and glibc; busybox is the rest of the userland.
    largest = [n for n, _ in info["largest-files"]]
    assert {"usr/lib/x86_64-linux-gnu/libcrypto.so.3", "usr/lib/x86_64-linux-gnu/libc.so.6",
            "usr/bin/busybox"} <= set(largest[:5]), largest


def test_verify_detects_tampering(built, tmp_path):
    copy = tmp_path / "minimal"
    shutil.copytree(built / "minimal", copy)
    with open(copy / "initrd.cpio.zst", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    r = run_cli(["verify", copy])
    assert r.returncode == 1
    assert "FAIL initrd.cpio.zst matches manifest" in r.stdout
    assert "check(s) failed" in r.stderr and "Traceback" not in r.stderr


def rpm_files(rpm: Path, dest: Path) -> Path:
    """`rpm` unpacked by the real rpm2cpio and cpio (not the builder's code) into `dest`."""
    dest.mkdir(parents=True)
    payload = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=dest, check=True)
    return dest


def test_firmware_the_kept_modules_declare_comes_from_the_firmware_package(built, fixture_repo, tmp_path):
    require_tools("modinfo", "rpm2cpio", "cpio")
    kver = fixture_repo.kernel_version
    kernel = rpm_files(fixture_repo.rpms["kernel-core"], tmp_path / "kernel") / f"usr/lib/modules/{kver}"
    firmware = rpm_files(fixture_repo.rpms["linux-firmware"], tmp_path / "firmware") / "usr/lib/firmware"
    m = json.loads((built / "storage/manifest.json").read_text())
    wanted = set()
    for module in m["kernel-modules"]:  # kmod's own modinfo, not the builder's .modinfo reader
        r = subprocess.run(["modinfo", "-F", "firmware", kernel / module], capture_output=True, text=True, check=True)
        wanted.update(r.stdout.split())
    assert m["firmware-wanted"] == sorted(wanted)
    # What the package ships, by the name the loader asks for; the kernel's configuration says
    # whether its loader reads the package's xz files as they are.
    shipped = {str(p.relative_to(firmware)).removesuffix(".xz"): p for p in firmware.rglob("*") if p.is_file()}
    xz_read = "CONFIG_FW_LOADER_COMPRESS_XZ=y" in (kernel / "config").read_text().splitlines()
    served = sorted(wanted & set(shipped))
    assert served and set(m["firmware-missing"]) == wanted - set(shipped) != set()
    entries = {e.name: e for e in read_cpio(built / "storage/initrd.cpio.zst")}
    in_image = sorted(n for n, e in entries.items() if n.startswith("usr/lib/firmware/") and e.is_file)
    suffix = ".xz" if xz_read else ""
    assert in_image == [f"usr/lib/firmware/{w}{suffix}" for w in served]
    for w in served:
        data = shipped[w].read_bytes() if xz_read else lzma.decompress(shipped[w].read_bytes())
        assert entries[f"usr/lib/firmware/{w}{suffix}"].data == data, w
        assert m["firmware"][f"{w}{suffix}"]["wanted"] == [w]
    assert m["firmware-packages"] == [p.rsplit("/", 1)[-1].removesuffix(".rpm")
                                      for p in [str(fixture_repo.rpms["linux-firmware"])]]
    # A variant naming no firmware packages gets none, whatever its modules declare.
    minimal = json.loads((built / "minimal/manifest.json").read_text())
    assert minimal["firmware"] == {} and minimal["firmware-packages"] == []
    assert minimal["firmware-missing"] == minimal["firmware-wanted"]
    assert not any(e.name.startswith("usr/lib/firmware") for e in read_cpio(built / "minimal/initrd.cpio.zst"))


def test_verify_and_inspect_show_the_firmware_and_what_was_not_found(built, fixture_repo, tmp_path):
    r = run_cli(["verify", "--repo", fixture_repo.path, built / "storage"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   no wanted firmware the firmware packages ship is missing" in r.stdout
    m = json.loads((built / "storage/manifest.json").read_text())
    r = run_cli(["inspect", "--json", built / "storage"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["firmware-missing"] == m["firmware-missing"]
    assert info["firmware"] == {p: f["size"] for p, f in m["firmware"].items()}
    assert info["firmware-size"] == sum(f["size"] for f in m["firmware"].values())
    text = run_cli(["inspect", built / "storage"]).stdout
    assert f"firmware wanted but not found ({len(m['firmware-missing'])}):" in text
    assert all(f"  {n}" in text.splitlines() for n in m["firmware-missing"])

    # A manifest claiming a shipped firmware was not found: the image holds a file it does not
    # list, and the repository's package ships the name.
    copy = tmp_path / "storage"
    shutil.copytree(built / "storage", copy)
    path, entry = sorted(m["firmware"].items())[0]
    forged = dict(m, firmware={p: f for p, f in m["firmware"].items() if p != path},
                  **{"firmware-missing": sorted([*m["firmware-missing"], *entry["wanted"]])})
    (copy / "manifest.json").write_text(json.dumps(forged))
    r = run_cli(["verify", "--repo", fixture_repo.path, copy])
    assert r.returncode == 1
    assert "FAIL firmware in the image is what the manifest lists" in r.stdout
    assert "FAIL no wanted firmware the firmware packages ship is missing" in r.stdout
    assert entry["wanted"][0] in r.stdout


def test_offline_rebuild_is_byte_identical(built, fixture_repo, tmp_path):
    """A second build, cold cache, one job, inside a network namespace with no interfaces but lo
    (down): same bytes as the first."""
    require_tools("unshare", "ip")
    out = tmp_path / "again"
    script = "ip -o link show | grep -v ': lo:' && exit 99; exec \"$@\""
    r = run_cli(build_args(fixture_repo.path, fixture_repo.kernel_version, out),
                wrap=["unshare", "--net", "sh", "-c", script, "sh"])
    assert r.returncode == 0, r.stderr
    for rel in ("minimal/initrd.cpio.zst", "minimal/uki.efi", "storage/initrd.cpio.zst"):
        assert (out / rel).read_bytes() == (built / rel).read_bytes(), rel
    assert json.loads((out / "minimal/manifest.json").read_text()) == \
        json.loads((built / "minimal/manifest.json").read_text())


def test_the_initrd_is_mkosis_cpio_compressed_with_the_variants_zstd_settings(built):
    """What ships is exactly the archive compressed with the variant's level and zstd-parameters."""
    tuned = load_variant(FIXTURE_VARIANTS / "storage.toml")
    assert tuned.zstd_parameters.values, "the storage fixture no longer tunes zstd"
    for name in ("minimal", "storage"):
        variant = load_variant(FIXTURE_VARIANTS / f"{name}.toml")
        path = built / name / "initrd.cpio.zst"
        shipped = path.read_bytes()
        assert variant.compression.compress(decompress_bytes(shipped, path)) == shipped, name
        manifest = json.loads((built / name / "manifest.json").read_text())
        assert manifest["outputs"]["initrd.cpio.zst"]["size"] == len(shipped)


def test_source_date_epoch_changes_the_output(fixture_repo, built, tmp_path):
    out = tmp_path / "sde"
    r = run_cli(build_args(fixture_repo.path, fixture_repo.kernel_version, out, "--variant", "storage"),
                env={"SOURCE_DATE_EPOCH": str(fixture_repo.source_date_epoch + 86400)})
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "storage/manifest.json").read_text())
    assert m["source-date-epoch"] == fixture_repo.source_date_epoch + 86400
    assert (out / "storage/initrd.cpio.zst").read_bytes() != (built / "storage/initrd.cpio.zst").read_bytes()


@pytest.mark.boot
def test_verify_boot_reaches_marker_with_initrd_and_uki(built, fixture_repo):
    require_tools("qemu-system-x86_64")
    r = run_cli(["verify", "--boot", "--expect", fixture_marker("minimal", fixture_repo.kernel_version),
                 built / "minimal"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   boots (kernel + initrd)" in r.stdout
    assert "ok   boots (UKI under OVMF)" in r.stdout
    assert "MKOSI-INITRD-BOOT-OK variant=minimal" in r.stdout


def with_init(initrd: Path, script: str, dest: Path) -> Path:
    """`initrd` with an archive appended whose /init replaces the image's: the kernel unpacks
    concatenated archives in order, a later entry overwriting an earlier one. It takes a cpio
    header after a compressed archive only at a 4-byte aligned offset and skips zero bytes on the
    way (init/initramfs.c, unpack_to_rootfs), so the compressed image is padded with zeros first:
    unpadded, the appended archive was ignored whenever the image's size was not a multiple of 4."""
    root = dest.parent / f"{dest.name}.root"
    root.mkdir()
    (root / "init").write_text(script)
    (root / "init").chmod(0o755)
    extra = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=b"init\n",
                           capture_output=True, check=True).stdout
    image = initrd.read_bytes()
    dest.write_bytes(image + b"\0" * (-len(image) % 4) + extra)
    return dest


@pytest.mark.boot
def test_default_boot_probe_needs_an_init_that_keeps_running(built, tmp_path):
    """Without --expect, a boot passes when /init started and ran on without a panic: an init that
    stays up passes, one that exits (the kernel panics) or powers off at once (the fixture init,
    having printed its marker) does not. The probe never looks for what a particular init prints."""
    require_tools("qemu-system-x86_64", "cpio")
    from mkosi_initrd_builder.building.formats.uki import uki_sections
    from mkosi_initrd_builder.checking.qemu import BootProbe, boot

    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(uki_sections(built / "minimal/uki.efi")[".linux"])
    initrd = built / "minimal/initrd.cpio.zst"
    probe = BootProbe(settle=5)
    append = "console=ttyS0 panic=-1"
    stays = with_init(initrd, "#!/usr/bin/busybox sh\nexec /usr/bin/busybox sleep 600\n", tmp_path / "stays")
    r = boot(kernel=kernel, initrd=stays, append=append, probe=probe, timeout=240)
    assert r.ok and "without a panic" in r.marker_line, r.console_tail
    dies = with_init(initrd, "#!/usr/bin/busybox sh\nexit 3\n", tmp_path / "dies")
    r = boot(kernel=kernel, initrd=dies, append=append, probe=probe, timeout=240)
    assert not r.ok and "Kernel panic" in r.marker_line, r.console_tail
    r = boot(kernel=kernel, initrd=initrd, append=append, probe=probe, timeout=240)
    assert not r.ok and BOOT_MARKER in r.console_tail, r.console_tail
    assert "stopped before /init had run long enough" in r.console_tail


def write_variant(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(text)
    return directory / f"{name}.toml"


def test_failing_variant_neither_hides_nor_corrupts_others(fixture_repo, tmp_path):
    variants = tmp_path / "variants"
    shutil.copy(FIXTURE_VARIANTS / "storage.toml", variants.mkdir() or variants / "storage.toml")
    write_variant(variants, "broken", 'summary = "s"\ndescription = "d"\nbase = "none"\n'
                                      'packages = ["initrd-init", "no-such-package"]\n')
    out = tmp_path / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", variants, "--jobs", "2"])
    assert r.returncode == 1
    assert "1 variant(s) failed: broken" in r.stderr
    assert "broken: variant 'broken' needs no-such-package, not found in repository" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["storage"]  # no partial 'broken', no work dirs
    assert run_cli(["verify", out / "storage"]).returncode == 0


def test_dnf_failure_is_reported_with_its_cause(fixture_repo, tmp_path):
    """A dependency that only dnf discovers (a Requires deep in the tree: the package the variant
    names exists, what it requires does not) fails that variant with dnf's own error line."""
    repo = tmp_path / "repo"
    shutil.copytree(fixture_repo.path, repo, ignore=shutil.ignore_patterns("repodata"))
    spec = tmp_path / "broken-dep.spec"
    spec.write_text("Name: broken-dep\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\n"
                    "BuildArch: noarch\nRequires: no-such-capability-anywhere\n"
                    "%description\nd\n%files\n")
    for rpm in build_rpm_from_spec(spec, tmp_path / "rpmbuild", {}, 1):
        shutil.copy(rpm, repo)
    make_repo(repo)
    variants = tmp_path / "variants"
    write_variant(variants, "deep", 'summary = "s"\ndescription = "d"\nbase = "none"\n'
                                    'packages = ["initrd-init", "broken-dep"]\n')
    r = run_cli(build_args(repo, fixture_repo.kernel_version, tmp_path / "out")[:-2]
                + ["--variants-dir", variants])
    assert r.returncode == 1
    assert "deep: mkosi failed with exit status 1" in r.stderr
    # mkosi's whole output is kept, and the error quotes its error lines, not only its last lines
    # (dnf's closing chatter about plugin patterns says nothing of the cause).
    log = Path(re.search(r"full output: (\S+)", r.stderr).group(1))
    assert log == tmp_path / "out" / ".logs" / "deep-mkosi.log" and "no-such-capability-anywhere" in log.read_text()
    errors = r.stderr.split("first error lines:", 1)[1].split("output (last lines):", 1)[0]
    assert "no-such-capability-anywhere" in errors, r.stderr


def test_size_budget_exceeded_lists_largest_contributors(fixture_repo, tmp_path):
    variants = tmp_path / "variants"
    write_variant(variants, "tight", 'summary = "s"\ndescription = "d"\nbase = "none"\n'
                                     'packages = ["initrd-init", "kmod"]\nsize-budget = "200K"\n')
    out = tmp_path / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", variants])
    assert r.returncode == 1
    assert "over its size-budget of 204,800 B" in r.stderr
    packages_line = next(line for line in r.stderr.splitlines() if "largest packages (uncompressed):" in line)
    assert "(kernel modules)" in packages_line and "busybox" in packages_line
    modules_line = next(line for line in r.stderr.splitlines() if "largest modules:" in line)
    assert "ext4.ko" in modules_line
    assert list(out.iterdir()) == []


SLIM = 'summary = "s"\ndescription = "d"\nbase = "none"\npackages = ["initrd-init", "kmod"]\n'


def test_removed_files_leave_the_image_and_the_manifest_says_why(fixture_repo, tmp_path):
    variants = tmp_path / "variants"
    write_variant(variants, "slim", SLIM + '[[remove-files]]\nreason = "no module tools"\n'
                                           'paths = ["/usr/*bin/kmod", "/usr/*bin/*mod", "/usr/*bin/modinfo"]\n')
    out = tmp_path / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", variants])
    assert r.returncode == 0, r.stderr
    names = {e.name for e in read_cpio(out / "slim/initrd.cpio.zst")}
    assert not [n for n in names if re.fullmatch(r"usr/s?bin/(kmod|\w*mod|modinfo)", n)]
    assert any(n.endswith("bin/busybox") for n in names)  # the rest of the packages stays
    manifest = json.loads((out / "slim/manifest.json").read_text())
    assert manifest["removed-on-purpose"] == [{"reason": "no module tools",
                                               "paths": ["/usr/*bin/kmod", "/usr/*bin/*mod", "/usr/*bin/modinfo"]}]
    r = run_cli(["verify", out / "slim"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing removed on purpose is in the image" in r.stdout


def test_removing_a_linked_library_fails_naming_the_glob_the_file_and_the_library(fixture_repo, tmp_path):
    variants = tmp_path / "variants"
    path = write_variant(variants, "broken", SLIM + '[[remove-files]]\nreason = "too far"\n'
                                                    'paths = ["/usr/lib*/**/libc.so*"]\n')
    out = tmp_path / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", variants])
    assert r.returncode == 1
    line = next(line for line in r.stderr.splitlines() if "took libc.so.6 out of the image" in line)
    assert str(path) in line and "/usr/lib*/**/libc.so*" in line and "links it" in line
    assert list(out.iterdir()) == []


def test_unknown_kernel_version_lists_available(fixture_repo, tmp_path):
    r = run_cli(build_args(fixture_repo.path, "9.9.9-1-amd64", tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"mkosi-initrd-build: error: kernel 9.9.9-1-amd64 not found in repository {fixture_repo.path} "
        f"(kernel versions available: {fixture_repo.kernel_version})")


def test_interrupted_build_leaves_no_partial_output(fixture_repo, tmp_path):
    require_root()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mkosi_initrd_builder", *map(str, build_args(
            fixture_repo.path, fixture_repo.kernel_version, out, "--jobs", "2"))],
        cwd=TOP, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a test run started in the background (a shell's `&` without job
        # control) ignores SIGINT, the builder would inherit that, and Ctrl-C would never reach it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Building the image with mkosi" in line:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert list(out.iterdir()) == []


@pytest.mark.boot
def test_verify_boot_takes_kernel_from_repository_for_initrd_only_variant(built, fixture_repo):
    require_tools("qemu-system-x86_64")
    r = run_cli(["verify", "--boot", built / "storage"], timeout=600)
    assert r.returncode == 1
    assert "no kernel to boot with: pass --kernel or --repo" in r.stdout
    r = run_cli(["verify", "--boot", "--repo", fixture_repo.path, "--expect", BOOT_MARKER, built / "storage"],
                timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MKOSI-INITRD-BOOT-OK variant=storage" in r.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "mkosi-initrd-build"
    r = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("mkosi-initrd-build ")
