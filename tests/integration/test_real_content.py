"""The product's own variants (spec/variants) built from real binaries and booted against real roots.

Debian trixie packages are repackaged as Fedora-named RPMs (tests/realcontent/mapping.toml), the
builder builds `virt` and `generic` from them unchanged, and each image boots in QEMU (TCG) to a
real root on plain ext4, on LVM2 and on LUKS2; `generic` also to ext4 on MD RAID1 (clean and
degraded), to an NFS root (v4.1 and v3, served from this machine by nfs-ganesha), and it
hibernates and resumes. A generic dracut initrd for the same kernel and drivers
boots through the same cases as the baseline. Deliberately broken setups must give up visibly
within a bound, naming the failing unit: emergency mode, or a fresh boot when a hibernation image
is lost. Every console log is kept in build/realcontent-boots/. Slow (about twenty minutes under
TCG; dracut's slow failure cases only with MKOSI_INITRD_REALCONTENT_DRACUT_BROKEN=1) and needs the
Debian mirror on a cold cache: run it with `make test-real` (pytest -m realcontent).
"""

from __future__ import annotations

import json
import re
import os
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.checking.cpio import read_cpio
from tests.conftest import PRODUCT_VARIANTS, TOP, require_root, require_tools
from tests.realcontent.matrix import GAVE_UP_RE
from tests.support.cli import run_cli

pytestmark = [pytest.mark.realcontent, pytest.mark.integration, pytest.mark.boot]

VARIANTS = ("virt", "generic")
CASE_NAMES = ("plain", "lvm", "luks")
ROOT_DEVICES = {"plain": "/dev/vda1", "lvm": "/dev/mapper/rcvg-root", "luks": "/dev/mapper/cryptroot"}
# The setups only `generic` claims (its description: MD RAID, an NFS root), booted with generic and
# with a dracut image of generic's drivers.
SETUP_IMAGES = ("generic", "dracut-generic")
# A RAID1 root with its second disk missing reaches the root with both: dracut's initqueue starts
# the array degraded once its wait times out (rd.retry); ours through mdadm-last-resort@.timer,
# which mdadm's udev rules arm 30 s after a member appears, for an array they take for local
# (generic's mdadm.conf says HOMEHOST <ignore>).
DEGRADED_REACHES_ROOT = {"generic": True, "dracut-generic": True}
# dracut gives up on a broken setup only after its initqueue retries (rd.retry 180 s, then
# rd.timeout): 5 to 8 minutes under TCG, measured. Those boots add about twenty minutes to a run,
# so they are for a maintainer comparing the two (MKOSI_INITRD_REALCONTENT_DRACUT_BROKEN=1); the
# broken cases always run with ours, and dracut always boots the working setups beside it.
DRACUT_BROKEN = os.environ.get("MKOSI_INITRD_REALCONTENT_DRACUT_BROKEN") == "1"
DRACUT_BROKEN_SKIP = ("dracut's degraded and broken-setup boots wait out its initqueue, 5 to 8 minutes each "
                      "under TCG, which would push .ci/run past its hour; "
                      "set MKOSI_INITRD_REALCONTENT_DRACUT_BROKEN=1 to run them")
BROKEN_CASES = ("raid-wrong-uuid",)
# NFS roots, served from this machine by nfs-ganesha (tests/realcontent/nfs.py), each case with
# the one protocol version its mount options ask for.
NFS_VERSIONS = {"nfs-v4": "4", "nfs-v3": "3"}
# A broken setup gives up after its device job times out (systemd's default: 90 s) or dracut's
# initqueue retries (rd.retry: 180 s), which under TCG on a loaded host takes minutes, but not ten.
BROKEN_TIMEOUT = 600.0
# What a failure must name: a unit in systemd's status lines ("initrd-root-device.target", …; on an
# 80-column serial console systemd shortens long names with an ellipsis: "systemd-hibe….service"),
# or, in dracut's initqueue warnings, the device it waited for ("devexists-\x2fdev\x2fdisk\x2fby-uuid…").
UNIT_NAME_RE = r"[\w\\@:.…-]+\.(?:service|device|target|mount|timer|socket)\b|devexists-\S*by-uuid"


@pytest.fixture(scope="module", autouse=True)
def selected(request):
    """Only when asked for: `pytest -m realcontent` (make test-real) or MKOSI_INITRD_REALCONTENT=1.
    A plain `make test` stays fast and offline."""
    if "realcontent" not in (request.config.getoption("markexpr") or "") \
            and not os.environ.get("MKOSI_INITRD_REALCONTENT"):
        pytest.skip("real-content tests run with 'make test-real' (pytest -m realcontent)")
    require_root()
    require_tools("mkosi", "ukify", "rpmbuild", "createrepo_c", "qemu-system-x86_64", "apt-get", "dpkg-deb",
                  "chroot")


@pytest.fixture(scope="module")
def distribution():
    from tests.realcontent.distribution import DistributionBuilder

    return DistributionBuilder()


@pytest.fixture(scope="module")
def real_repo(distribution):
    return distribution.build()


@pytest.fixture(scope="module")
def disks(real_repo, distribution):
    from tests.realcontent.disks import build_disks

    return build_disks(real_repo, distribution)


@pytest.fixture(scope="module")
def built(real_repo, tmp_path_factory):
    """virt and generic from spec/variants, built by the CLI exactly as users run it."""
    out = tmp_path_factory.mktemp("real") / "out"
    args = ["build", "--repo", real_repo.path, "--kernel-version", real_repo.kernel_version, "--output", out,
            "--variants-dir", PRODUCT_VARIANTS, "--jobs", "2"]
    for v in VARIANTS:
        args += ["--variant", v]
    r = run_cli(args, timeout=1800)
    assert r.returncode == 0, r.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def boot_logs():
    """Console logs of every boot, kept where a maintainer looks after a failed run."""
    logs = TOP / "build" / "realcontent-boots"
    logs.mkdir(parents=True, exist_ok=True)
    return logs


@pytest.fixture(scope="module")
def dracut_generic_image(real_repo, distribution, built, tmp_path_factory):
    """dracut with exactly generic's drivers (md, nfs, network cards), for generic's setups."""
    from tests.realcontent.dracut import build_dracut_image

    modules = json.loads((built / "generic/manifest.json").read_text())["kernel-modules"]
    return build_dracut_image(real_repo, distribution, modules,
                              tmp_path_factory.mktemp("dracut-generic") / "dracut.img",
                              firmware_from=built / "generic/initrd.cpio.zst")


def setup_initrd(request, image: str) -> Path:
    """The initrd of SETUP_IMAGES' `image`; dracut's is built only when a test asks for it."""
    if image == "dracut-generic":
        return request.getfixturevalue("dracut_generic_image").path
    return request.getfixturevalue("built") / image / "initrd.cpio.zst"


@pytest.fixture(scope="module")
def dracut_image(real_repo, distribution, built, tmp_path_factory):
    from tests.realcontent.dracut import build_dracut_image

    modules = json.loads((built / "virt/manifest.json").read_text())["kernel-modules"]
    return build_dracut_image(real_repo, distribution, modules, tmp_path_factory.mktemp("dracut") / "dracut.img")


def rpm_query(rpm: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", fmt, str(rpm)], capture_output=True, text=True,
                          check=True).stdout


def test_repository_has_fedora_names_and_the_real_kernel(real_repo):
    rpms = real_repo.rpms
    for name in ("filesystem", "basesystem", "glibc", "systemd", "systemd-udev", "systemd-cryptsetup",
                 "util-linux-core", "lvm2", "device-mapper", "cryptsetup", "kmod", "kmod-libs", "kernel-core",
                 "systemd-boot-unsigned", "xfsprogs-xfs_scrub", "glibc-gconv-extra"):
        assert name in rpms, name
    repo = real_repo.path
    kernel = rpm_query(repo / rpms["kernel-core"], "%{VERSION}-%{RELEASE} [%{FILENAMES}\n]")
    assert f"/usr/lib/modules/{real_repo.kernel_version}/vmlinuz" in kernel
    assert real_repo.kernel_version.startswith(kernel.split("-")[0] + "+")  # trixie unames: VERSION+debNN-FLAVOUR
    provides = rpm_query(repo / rpms["kernel-core"], "[%{PROVIDENEVRS}\n]")
    assert "kernel" in provides.split("\n")
    assert real_repo.kernel_version not in provides, "a uname with dashes in a versioned Provides"
    assert "rtld(GNU_HASH)" in rpm_query(repo / rpms["glibc"], "[%{PROVIDES}\n]")
    # generated from systemd's .note.dlopen: libkmod is "recommended" there, a hard Requires here
    assert "libkmod.so.2()(64bit)" in rpm_query(repo / rpms["systemd"], "[%{REQUIRES}\n]").split()
    files = rpm_query(repo / rpms["systemd"], "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
    assert "l /usr/share/licenses/systemd/systemd.copyright" in files
    assert not any(line.endswith("/systemd-networkd") for line in files.splitlines())


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_builds_within_its_size_budget(built, variant):
    m = json.loads((built / variant / "manifest.json").read_text())
    size = m["outputs"]["initrd.cpio.zst"]["size"]
    assert size <= m["size-budget"], f"{variant}: {size:,} B over {m['size-budget']:,} B"
    names = {p.rsplit("-", 2)[0] for p in m["packages"]}
    assert {"systemd", "systemd-udev", "lvm2", "cryptsetup", "systemd-cryptsetup", "kmod-libs"} <= names
    # Fedora's splits keep these out of an initrd
    assert not names & {"libicu", "xfsprogs-xfs_scrub", "glibc-gconv-extra", "util-linux"}
    entries = {e.name for e in read_cpio(built / variant / "initrd.cpio.zst")}
    assert "usr/lib/systemd/systemd-cryptsetup" in entries
    assert not any(e.startswith("usr/share/locale/") and e.endswith(".mo") for e in entries)


@pytest.mark.parametrize("variant", VARIANTS)
def test_firmware_of_the_kept_drivers_is_in_the_image_and_accounted_for(built, real_repo, variant):
    """verify --repo checks the image's firmware byte for byte against the manifest and that nothing
    listed as not found is shipped by the variant's firmware packages; here, independently, rpm's own
    file list of those packages says which wanted names had to come along."""
    r = run_cli(["verify", "--repo", real_repo.path, built / variant])
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((built / variant / "manifest.json").read_text())
    shipped = set()
    for nevra in m["firmware-packages"]:
        rpm = real_repo.path / real_repo.rpms[nevra.rsplit("-", 2)[0]]
        shipped |= {f.removeprefix("/usr/lib/firmware/") for f in rpm_query(rpm, "[%{FILENAMES}\n]").split()}
    wanted_and_shipped = set(m["firmware-wanted"]) & shipped
    served = {w for f in m["firmware"].values() for w in f["wanted"]}
    assert served == wanted_and_shipped
    assert set(m["firmware-missing"]) == set(m["firmware-wanted"]) - shipped
    if m["firmware-packages"]:
        # Debian's firmware packages link versioned files under stable names (cxgb4/t4fw.bin):
        # the link and the file it leads to both come along.
        links = {p: f["link"] for p, f in m["firmware"].items() if "link" in f}
        assert links and all(any(q != p and q.endswith(t.rsplit("/", 1)[-1]) for q in m["firmware"])
                             for p, t in links.items())


@pytest.mark.parametrize("variant,case", [(v, c) for v in VARIANTS for c in CASE_NAMES])
def test_initrd_switches_to_the_real_root(built, real_repo, disks, variant, case, tmp_path):
    from tests.realcontent.matrix import boot_case

    r = boot_case(case, disks, kernel=real_repo.vmlinuz, initrd=built / variant / "initrd.cpio.zst",
                  console_log=tmp_path / "console.log")
    assert r.ok, r.describe()
    assert r.root_device == ROOT_DEVICES[case], r.describe()
    assert not r.failed_units, r.failed_units


def test_virt_uki_boots_under_ovmf_to_luks_root(built, disks, tmp_path):
    from tests.realcontent.matrix import boot_case

    r = boot_case("luks", disks, kernel=built / "virt/uki.efi", uefi=True, console_log=tmp_path / "console.log")
    assert r.ok, r.describe()
    assert r.root_device == ROOT_DEVICES["luks"] and not r.failed_units, r.describe()
    assert "EFI stub" in (tmp_path / "console.log").read_text(errors="replace")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_dracut_baseline_switches_to_the_real_root(dracut_image, real_repo, disks, case, tmp_path):
    from tests.realcontent.matrix import boot_case

    r = boot_case(case, disks, kernel=real_repo.vmlinuz, initrd=dracut_image.path,
                  console_log=tmp_path / "console.log")
    assert r.ok, r.describe()
    assert r.root_device == ROOT_DEVICES[case], r.describe()


def test_generic_carries_mdadm_rules_and_an_mdadm_conf_naming_no_array(built):
    """The array must assemble from its superblocks alone: an ARRAY line would name the build
    machine's arrays, which a prebuilt image knows nothing of. The variant's mdadm.conf only
    trusts arrays made elsewhere, so their last-resort timer can start them degraded."""
    entries = {e.name: e for e in read_cpio(built / "generic/initrd.cpio.zst")}
    assert "etc/mdadm/mdadm.conf" not in entries
    conf = entries["etc/mdadm.conf"].data.decode()
    words = [line.split()[0].upper() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert words == ["HOMEHOST"] and "<ignore>" in conf, conf
    rules = {Path(e).name for e in entries if e.startswith("usr/lib/udev/rules.d/")}
    assert any("md-raid-assembly" in r or "md-incremental" in r for r in rules), sorted(rules)
    units = {Path(e).name for e in entries if e.startswith("usr/lib/systemd/system/")}
    assert {"mdadm-last-resort@.timer", "mdadm-last-resort@.service"} <= units, sorted(units)


@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_md_raid1_root_assembles_without_mdadm_conf(request, real_repo, disks, boot_logs, image):
    from tests.realcontent.matrix import boot_case

    r = boot_case("raid", disks, kernel=real_repo.vmlinuz, initrd=setup_initrd(request, image),
                  console_log=boot_logs / f"{image}-raid.log")
    assert r.ok, r.describe()
    assert r.root_device.startswith("/dev/md"), r.describe()
    assert not r.failed_units, r.failed_units


@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_degraded_md_raid1_root_boots_or_gives_up_naming_the_device(request, real_repo, disks, boot_logs, image):
    from tests.realcontent.matrix import boot_case

    if image.startswith("dracut") and not DRACUT_BROKEN:
        pytest.skip(DRACUT_BROKEN_SKIP)
    r = boot_case("raid-degraded", disks, kernel=real_repo.vmlinuz, initrd=setup_initrd(request, image),
                  timeout=BROKEN_TIMEOUT, console_log=boot_logs / f"{image}-raid-degraded.log")
    if DEGRADED_REACHES_ROOT[image]:
        assert r.ok and r.root_device.startswith("/dev/md"), r.describe()
    else:
        assert not r.ok and r.root_device is None, r.describe()
        assert re.search(GAVE_UP_RE, r.marker_line), r.describe()
        assert any(re.search(UNIT_NAME_RE, line) for line in r.failure_lines), r.describe()


@pytest.mark.parametrize("case", BROKEN_CASES)
@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_broken_setup_gives_up_naming_the_failing_unit(request, real_repo, disks, boot_logs, image, case):
    """No root, no endless wait: the initrd reaches emergency mode within the bound, and its
    status lines name the unit that failed."""
    from tests.realcontent.matrix import boot_case

    if image.startswith("dracut") and not DRACUT_BROKEN:
        pytest.skip(DRACUT_BROKEN_SKIP)
    r = boot_case(case, disks, kernel=real_repo.vmlinuz, initrd=setup_initrd(request, image),
                  timeout=BROKEN_TIMEOUT, console_log=boot_logs / f"{image}-{case}.log")
    assert r.ok, r.describe()
    assert r.root_device is None, r.describe()
    assert any(re.search(UNIT_NAME_RE, line) for line in r.failure_lines), r.describe()


@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_hibernated_root_resumes_with_the_same_image(request, real_repo, disks, boot_logs, image):
    """resume= on the command line: the second boot restores the first boot's memory, so the root's
    init, hibernated mid-script, prints the token it had generated before."""
    from tests.realcontent.matrix import hibernate_and_resume

    r = hibernate_and_resume("resume", disks, kernel=real_repo.vmlinuz, initrd=setup_initrd(request, image),
                             logs=boot_logs, prefix=image)
    assert r.token and r.hibernated, r.describe()
    assert r.resumed and not r.second_boot_fresh, r.describe()


@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_resume_from_a_corrupt_swap_signature_fails_visibly(request, real_repo, disks, boot_logs, image):
    """The image is lost (its signature overwritten): the boot names the unit that could not find the
    resume device and goes on without resuming, within the bound; it never restores stale memory."""
    from tests.realcontent.matrix import hibernate_and_resume

    if image.startswith("dracut") and not DRACUT_BROKEN:
        pytest.skip(DRACUT_BROKEN_SKIP)
    r = hibernate_and_resume("resume-corrupt-swap", disks, kernel=real_repo.vmlinuz,
                             initrd=setup_initrd(request, image), logs=boot_logs, prefix=image,
                             corrupt_swap=True, timeout=BROKEN_TIMEOUT)
    assert r.token and r.hibernated, r.describe()
    assert r.resumed_token is None, r.describe()
    assert r.second_boot_fresh or r.gave_up, r.describe()
    assert any(re.search(UNIT_NAME_RE, line) for line in r.failure_lines), r.describe()


def test_generic_uki_resumes_through_the_efi_hibernate_location(built, disks, boot_logs):
    """No resume= at all: the root writes HibernateLocation as systemd-sleep does, and the UKI's
    initrd (systemd-hibernate-resume-generator) reads it on the next boot under the same OVMF
    variable store."""
    from tests.realcontent.matrix import OVMF_PFLASH, hibernate_and_resume

    if not all(f.exists() for f in OVMF_PFLASH):
        pytest.skip("OVMF's split firmware and variable store are missing (Debian: ovmf)")
    r = hibernate_and_resume("resume-efi", disks, kernel=built / "generic/uki.efi", logs=boot_logs,
                             prefix="generic-uki", efi_variables=True)
    assert r.token and r.hibernated, r.describe()
    assert r.resumed and not r.second_boot_fresh, r.describe()


@pytest.fixture(scope="module")
def nfs_root(tmp_path_factory):
    """The root tree the NFS cases export; the server runs only while a case boots."""
    from tests.realcontent.disks import busybox_path
    from tests.realcontent.nfs import make_nfs_root, server_tools

    if missing := server_tools():
        pytest.skip("NFS server tools missing: " + ", ".join(missing) + " (apt-get install "
                    + " ".join(sorted(set(missing.values()))) + ")")
    return make_nfs_root(tmp_path_factory.mktemp("nfs") / "root", "nfs", busybox_path())


@pytest.mark.parametrize("case", NFS_VERSIONS)
@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_nfs_root_mounts_over_dhcp_configured_network(request, real_repo, nfs_root, boot_logs, image, case):
    """ip=dhcp brings the network up in the initrd (QEMU's DHCP), the root is mounted from the server
    on this machine, and its init runs from NFS."""
    from tests.realcontent.disks import NFS_EXPORT, NFS_SERVER
    from tests.realcontent.matrix import boot_case
    from tests.realcontent.nfs import nfs_server

    with nfs_server(nfs_root, versions=(NFS_VERSIONS[case],)):
        r = boot_case(case, None, kernel=real_repo.vmlinuz, initrd=setup_initrd(request, image),
                      console_log=boot_logs / f"{image}-{case}.log", dracut=image.startswith("dracut"))
    assert r.ok, r.describe()
    assert r.root_device == f"{NFS_SERVER}:{NFS_EXPORT}", r.describe()
    assert not r.failed_units, r.failed_units


@pytest.mark.parametrize("image", SETUP_IMAGES)
def test_unreachable_nfs_server_gives_up_naming_the_root_mount(request, real_repo, boot_logs, image):
    """No server listens: the network comes up, the mount is refused until its job times out, and
    the initrd names sysroot.mount on its way to emergency mode; nothing waits forever."""
    from tests.realcontent.matrix import boot_case

    if image.startswith("dracut") and not DRACUT_BROKEN:
        pytest.skip(DRACUT_BROKEN_SKIP)
    r = boot_case("nfs-unreachable", None, kernel=real_repo.vmlinuz, initrd=setup_initrd(request, image),
                  timeout=BROKEN_TIMEOUT, console_log=boot_logs / f"{image}-nfs-unreachable.log",
                  dracut=image.startswith("dracut"))
    assert r.ok, r.describe()
    assert r.root_device is None, r.describe()
    assert any(re.search(UNIT_NAME_RE, line) for line in r.failure_lines), r.describe()
