"""Root disks for the boot matrix: plain ext4 on GPT, ext4 on an LVM2 logical volume, ext4 on LUKS2
(unlocked with a key file on a second small disk), ext4 on an MD RAID1 array of two disks, and ext4
beside a swap partition for hibernation.

The host cannot make them: it has loop devices but no device-mapper (`dmsetup version` reports no
kernel driver; this is a container without dm_mod), so LVM and LUKS volumes cannot be opened here.
All disks are therefore made inside a provisioning VM: the same Debian kernel booted with a
throw-away initrd made of busybox, Debian trixie's sfdisk, lvm2, cryptsetup and e2fsprogs, a few
kernel modules and a script. The images are cached under a hash of everything that goes into
them; boots attach them with snapshot=on, so they stay pristine.

Each root holds busybox and an /sbin/init that prints
``REALCONTENT-ROOT-OK case=<case> uptime=<s> root=<device>`` on the console and powers off:
it runs as PID 1 of the real root, so seeing it proves that switch-root happened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.fsutil import sha256_file
from mkosi_initrd_builder.building.kmod import select_modules
from mkosi_initrd_builder.checking.qemu import BootProbe, boot

from tests.support.fixtures import CacheKey, publish_entry

from .apt import extract_deb, needed_packages
from .distribution import DistributionBuilder, RealRepo

log = logging.getLogger("tests.realcontent.disks")

CACHE_FORMAT = "realcontent-disks/1"
ROOT_MARKER = "REALCONTENT-ROOT-OK"
HIBERNATE_MARKER = "REALCONTENT-HIBERNATE"
EFIVARS = "/sys/firmware/efi/efivars"
HIBERNATE_LOCATION_VAR = "HibernateLocation-8cf2644b-4b0b-428f-9387-6d876050dc67"   # systemd's vendor GUID
RESUMED_MARKER = "REALCONTENT-RESUMED"
PROVISION_MARKER = "REALCONTENT-PROVISION-OK"
PROVISION_FAIL = "REALCONTENT-PROVISION-FAIL"
PROVISION_TIMEOUT = 600.0
# Debian packages whose tools make the disks (in the provisioning VM); util-linux for mkswap -U,
# which busybox lacks.
PROVISION_PACKAGES = ("fdisk", "lvm2", "dmsetup", "cryptsetup-bin", "e2fsprogs", "kmod", "mdadm", "util-linux")
PROVISION_MODULES = ('/virtio_(blk|pci)\\.ko', '/dm-(mod|crypt)\\.ko', '/ext4\\.ko', '^kernel/crypto/',
                     '^kernel/arch/x86/crypto/', '/(md-mod|raid1)\\.ko')
# Fixed identities, so that the kernel command lines are known before the disks exist.
UUIDS = {
    "plain_fs": "6d1b0d4e-7b8f-4c55-9a1e-000000000001",
    "lvm_fs": "6d1b0d4e-7b8f-4c55-9a1e-000000000002",
    "luks": "6d1b0d4e-7b8f-4c55-9a1e-000000000003",
    "luks_fs": "6d1b0d4e-7b8f-4c55-9a1e-000000000004",
    "raid_fs": "6d1b0d4e-7b8f-4c55-9a1e-000000000005",
    "raid_array": "6d1b0d4e-7b8f-4c55-9a1e-000000000006",
    "resume_fs": "6d1b0d4e-7b8f-4c55-9a1e-000000000007",
    "swap": "6d1b0d4e-7b8f-4c55-9a1e-000000000008",
    # the broken cases' root: no disk has it
    "absent_fs": "6d1b0d4e-7b8f-4c55-9a1e-0000000000ff",
}
VOLUME_GROUP = "rcvg"
KEY_LABEL = "rckey"
KEY_PATH = "/root.key"
GPT_ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
GPT_LVM = "e6d6d379-f507-44c2-a23c-238f2a3df928"
GPT_LINUX_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_LINUX_RAID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
GPT_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
# The swap partition holds the hibernation image of a guest with BOOT_MEMORY (1 GiB); the kernel
# shrinks the image to at most 2/5 of RAM, so 512 MiB always suffices. Images are sparse files.
RESUME_SWAP_MB = 512
RESUME_ROOT_SECTORS = 120832   # 59 MiB of ext4 from sector 2048, then the swap partition
RESUME_SWAP_OFFSET = (2048 + RESUME_ROOT_SECTORS) * 512   # bytes into the disk
DISK_SIZES_MB = {"plain": 64, "lvm": 64, "luks": 96, "key": 8, "raid_a": 64, "raid_b": 64,
                 "resume": 64 + RESUME_SWAP_MB + 2}


# NFS roots, exported by nfs.py from this machine. QEMU's user network shows the guest this
# machine's 127.0.0.1 as its gateway 10.0.2.2 (nothing leaves the machine); the server's ports are
# fixed and unprivileged, and the mount options name them, so the guest asks no portmapper. NFSv3
# needs nolock besides: no rpc.statd runs in an initrd.
NFS_SERVER = "10.0.2.2"
NFS_EXPORT = "/realcontent"
NFS_PORT, NFS_MOUNT_PORT = 20490, 20048
NFS_PORT_UNUSED = 20491   # the broken case's: no server ever listens there
# vers=4.1, not 4.2: with nfs-ganesha 4.3 a 4.2 mount succeeded but the kernel then failed to execute
# the root's /sbin/init from it ("Exec format error"); 4.1 reads it correctly.
NFS_OPTIONS = {"4": f"vers=4.1,port={NFS_PORT}", "4-unused-port": f"vers=4.1,port={NFS_PORT_UNUSED}",
               "3": f"vers=3,proto=tcp,port={NFS_PORT},mountport={NFS_MOUNT_PORT},mountproto=tcp,nolock"}


@dataclasses.dataclass(frozen=True)
class BootCase:
    """One row of the boot matrix: which disks are attached and the kernel command line (and, where
    dracut's syntax differs, the line a dracut user types for the same setup)."""

    name: str
    disks: tuple[str, ...]
    cmdline: str
    method: str
    root: str = ""          # the root whose marker proves the boot (its /etc/realcontent-case): name if empty
    broken: bool = False    # a deliberately broken setup: the boot must fail visibly, never reach a root
    nic: bool = False       # a virtio NIC on QEMU's user network (DHCP from the emulator)
    dracut_cmdline: str = ""

    @property
    def root_case(self) -> str:
        return self.root or self.name

    def append(self, console: str = "console=ttyS0", *, dracut: bool = False) -> str:
        line = (self.dracut_cmdline if dracut and self.dracut_cmdline else self.cmdline).format(
            **UUIDS, vg=VOLUME_GROUP, key=KEY_PATH, label=KEY_LABEL, server=NFS_SERVER, export=NFS_EXPORT,
            nfs4=NFS_OPTIONS["4"], nfs3=NFS_OPTIONS["3"], nfs4_unused=NFS_OPTIONS["4-unused-port"])
        return f"{line} {console} panic=-1"


BOOT_CASES = (
    BootCase("plain", ("plain",), "root=UUID={plain_fs} rw",
             "ext4 on a GPT partition, found by file system UUID"),
    BootCase("lvm", ("lvm",), "root=UUID={lvm_fs} rw rd.lvm.lv={vg}/root",
             "ext4 on LV rcvg/root (PV on a GPT partition); udev's lvm2 rules activate the VG "
             "(rd.lvm.lv= is for dracut; systemd ignores it)"),
    BootCase("luks", ("luks", "key"),
             "root=UUID={luks_fs} rw rd.luks.name={luks}=cryptroot rd.luks.key={luks}={key}:LABEL={label}",
             "ext4 in LUKS2 (argon2id) on a GPT partition; systemd-cryptsetup-generator reads the key "
             "file /root.key from the ext4 file system labelled rckey on a second disk (rd.luks.key=)"),
    BootCase("raid", ("raid_a", "raid_b"), "root=UUID={raid_fs} rw rd.md.uuid={raid_array}",
             "ext4 on an MD RAID1 array (metadata 1.2) of two GPT partitions; udev's mdadm rules assemble it "
             "incrementally, with no ARRAY line in the image (rd.md.uuid= is for dracut, which assembles no "
             "array without it or rd.auto; Fedora's installer writes it; systemd ignores it)"),
    BootCase("raid-degraded", ("raid_a",), "root=UUID={raid_fs} rw rd.md.uuid={raid_array}",
             "the raid root with its second disk missing: the array is incomplete until something starts it "
             "degraded (mdadm-last-resort@.timer, dracut's initqueue timeout)", root="raid"),
    BootCase("raid-wrong-uuid", ("raid_a", "raid_b"), "root=UUID={absent_fs} rw rd.md.uuid={raid_array}",
             "broken: the array assembles but no file system has the root's UUID", broken=True),
    BootCase("resume", ("resume",), "root=UUID={resume_fs} rw resume=UUID={swap}",
             "ext4 beside a swap partition; the root hibernates to swap, the next boot resumes (resume=)"),
    BootCase("resume-efi", ("resume",), "root=UUID={resume_fs} rw",
             "as resume, booted as a UKI under OVMF with persistent EFI variables and no resume=: the "
             "initrd finds the image through the HibernateLocation EFI variable the root wrote", root="resume"),
    # systemd-hibernate-resume-generator waits for the resume device without a limit (a boot that
    # went on without it would lose the hibernated session); resumeflags= bounds the wait.
    BootCase("resume-corrupt-swap", ("resume",),
             "root=UUID={resume_fs} rw resume=UUID={swap} resumeflags=x-systemd.device-timeout=30s",
             "broken: the hibernation image's swap signature is overwritten before the second boot, so the "
             "resume device never appears", root="resume", broken=True),
    # systemd's fstab-generator leaves dracut's root=nfs:... to dracut's scripts and takes the server
    # and path as root=, the type and options apart; ip= asks for the network (DHCP).
    BootCase("nfs-v4", (), "systemd.mount-extra={server}\\x3a{export}:/:nfs:{nfs4},rw ip=dhcp",
             "NFSv4.2 root from nfs-ganesha on this machine, network by DHCP from QEMU (ip=dhcp)", root="nfs",
             nic=True, dracut_cmdline="root=nfs4:{server}:{export}:{nfs4} rw ip=dhcp"),
    BootCase("nfs-v3", (), "systemd.mount-extra={server}\\x3a{export}:/:nfs:{nfs3},rw ip=dhcp",
             "NFSv3 root over TCP, as nfs-v4; the options name the MOUNT port and turn locking off",
             root="nfs", nic=True, dracut_cmdline="root=nfs:{server}:{export}:{nfs3} rw ip=dhcp"),
    BootCase("nfs-unreachable", (), "systemd.mount-extra={server}\\x3a{export}:/:nfs:{nfs4_unused},rw ip=dhcp",
             "broken: nfs-v4 with no server listening on the port it names: the network comes up, every "
             "connection is refused", root="nfs", nic=True, broken=True,
             dracut_cmdline="root=nfs4:{server}:{export}:{nfs4_unused} rw ip=dhcp"),
)
CASES = {c.name: c for c in BOOT_CASES}

ROOT_INIT = f"""#!/bin/busybox sh
# PID 1 of the real root: proves switch-root happened, then powers off.
/bin/busybox mount -t proc proc /proc 2>/dev/null
read up _ < /proc/uptime
src=unknown
while read -r _ _ _ _ mp rest; do
    [ "$mp" = / ] && src=${{rest#* - }} && src=${{src#* }} && src=${{src%% *}}
done < /proc/self/mountinfo
case=$(/bin/busybox cat /etc/realcontent-case)
echo "{ROOT_MARKER} case=$case uptime=$up root=$src" > /dev/console
if [ -e /etc/realcontent-swap ]; then
    # The token lives only in this shell's memory: printing it after the next boot proves that boot
    # resumed this process from the hibernation image.
    token=$(/bin/busybox cat /proc/sys/kernel/random/uuid)
    swap=$(/bin/busybox cat /etc/realcontent-swap)
    echo "{HIBERNATE_MARKER} case=$case token=$token swap=$swap" > /dev/console
    # What systemd-sleep does before hibernating on EFI: tell the next boot's initrd where the image
    # is, so that it can resume without resume= on the command line. The file holds the variable as
    # efivarfs takes it: attributes NV|BS|RT, then the JSON in UTF-16LE with its NUL, as systemd's
    # efi_set_variable_string() writes it; cat hands it over in the one write efivarfs needs.
    if [ -d /sys/firmware/efi ]; then
        /bin/busybox grep -q " {EFIVARS} " /proc/mounts ||
            /bin/busybox mount -t efivarfs efivarfs {EFIVARS}
        /bin/busybox cat /etc/realcontent-hibernate-location > {EFIVARS}/{HIBERNATE_LOCATION_VAR} ||
            echo "REALCONTENT-EFIVAR-FAILED {HIBERNATE_LOCATION_VAR}" > /dev/console
    fi
    /bin/busybox swapon "$swap" && echo shutdown > /sys/power/disk && echo disk > /sys/power/state
    status=$?
    read up _ < /proc/uptime
    echo "{RESUMED_MARKER} case=$case token=$token status=$status uptime=$up" > /dev/console
fi
/bin/busybox sync
/bin/busybox poweroff -f
"""

PROVISION_INIT = f"""#!/bb/sh
/bb/mount -t proc proc /proc
/bb/mount -t sysfs sysfs /sys
/bb/mount -t devtmpfs devtmpfs /dev
/bb/mkdir -p /run /tmp /run/cryptsetup /run/lock/lvm
exec > /dev/console 2>&1
export PATH=/usr/sbin:/usr/bin:/bb
if sh -e /provision; then
    sync
    echo {PROVISION_MARKER}
else
    echo "{PROVISION_FAIL} (exit status $?)"
fi
poweroff -f
"""

PROVISION_SCRIPT = f"""
set -x
# No udev here: libdevmapper and lvm create their device nodes themselves.
export DM_DISABLE_UDEV=1
LVMCONF='devices {{ obtain_device_list_from_udev=0 }} activation {{ udev_sync=0 udev_rules=0 }}'
modprobe -a virtio_pci virtio_blk dm_mod dm_crypt ext4 md_mod raid1
for d in vda vdb vdc vdd vde vdf vdg; do
    i=0; while [ ! -b /dev/$d ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done
done
root_tree() {{
    rm -rf /tmp/root && cp -a /rootfs /tmp/root && echo "$1" > /tmp/root/etc/realcontent-case
}}
gpt_one_partition() {{
    printf 'label: gpt\\nstart=2048, type=%s, name=%s\\n' "$2" "$3" | sfdisk --quiet --wipe always "$1"
    i=0; while [ ! -b "${{1}}1" ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done
}}

# 1. plain: ext4 on a GPT partition
gpt_one_partition /dev/vda {GPT_ROOT_X86_64} root
root_tree plain
mkfs.ext4 -q -U {UUIDS['plain_fs']} -L rcplain -d /tmp/root /dev/vda1

# 2. lvm: ext4 on an LV
gpt_one_partition /dev/vdb {GPT_LVM} lvm
pvcreate --config "$LVMCONF" -q /dev/vdb1
vgcreate --config "$LVMCONF" -q {VOLUME_GROUP} /dev/vdb1
lvcreate --config "$LVMCONF" -q -y -Zn -l 100%FREE -n root {VOLUME_GROUP}
root_tree lvm
mkfs.ext4 -q -U {UUIDS['lvm_fs']} -L rclvm -d /tmp/root /dev/mapper/{VOLUME_GROUP}-root
vgchange --config "$LVMCONF" -q -an {VOLUME_GROUP}

# 3. luks: ext4 in LUKS2 (small argon2id cost: unlocking runs under TCG), key file on vdd
gpt_one_partition /dev/vdc {GPT_LINUX_DATA} luks
cryptsetup luksFormat --batch-mode --type luks2 --uuid {UUIDS['luks']} --pbkdf argon2id \\
    --pbkdf-memory 32768 --pbkdf-parallel 1 --pbkdf-force-iterations 4 --key-file /key /dev/vdc1
cryptsetup open --key-file /key /dev/vdc1 rcluks
root_tree luks
mkfs.ext4 -q -U {UUIDS['luks_fs']} -L rcluks -d /tmp/root /dev/mapper/rcluks
cryptsetup close rcluks
mkdir -p /tmp/keyfs && cp /key /tmp/keyfs{KEY_PATH}
mkfs.ext4 -q -L {KEY_LABEL} -d /tmp/keyfs /dev/vdd

# 4. raid: ext4 on an MD RAID1 array (metadata 1.2) of one GPT partition on each of vde and vdf.
# --assume-clean: both members are blank, so there is nothing to resync. mdadm.conf is not written.
gpt_one_partition /dev/vde {GPT_LINUX_RAID} raid-a
gpt_one_partition /dev/vdf {GPT_LINUX_RAID} raid-b
mdadm --create /dev/md/rcraid --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean \
    --uuid={UUIDS['raid_array']} --homehost=provision /dev/vde1 /dev/vdf1
root_tree raid
mkfs.ext4 -q -U {UUIDS['raid_fs']} -L rcraid -d /tmp/root /dev/md/rcraid
mdadm --stop /dev/md/rcraid

# 5. resume: ext4 root and a swap partition, which the root's init hibernates to
printf 'label: gpt\\nstart=2048, size=%s, type=%s, name=root\\nstart=%s, type=%s, name=swap\\n' \\
    {RESUME_ROOT_SECTORS} {GPT_ROOT_X86_64} {RESUME_SWAP_OFFSET // 512} {GPT_SWAP} | sfdisk --quiet --wipe always /dev/vdg
i=0; while [ ! -b /dev/vdg2 ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done
root_tree resume
echo /dev/vda2 > /tmp/root/etc/realcontent-swap
cp /hibernate-location.var /tmp/root/etc/realcontent-hibernate-location
mkfs.ext4 -q -U {UUIDS['resume_fs']} -L rcresume -d /tmp/root /dev/vdg1
# by path: busybox sh prefers its own applets, and busybox mkswap has no -U
/usr/sbin/mkswap -U {UUIDS['swap']} /dev/vdg2
"""


@dataclasses.dataclass(frozen=True)
class RootDisks:
    directory: Path

    def image(self, name: str) -> Path:
        return self.directory / f"{name}.img"

    def drive_args(self, case: BootCase) -> list[str]:
        """QEMU options attaching the case's disks as virtio disks, copy-on-write."""
        args: list[str] = []
        for name in case.disks:
            args += ["-drive", f"file={self.image(name)},format=raw,if=virtio,snapshot=on"]
        return args


def busybox_path() -> Path:
    found = Path("/bin/busybox") if Path("/bin/busybox").exists() else None
    found = found or (Path(p) if (p := shutil.which("busybox")) else None)
    if found is None:
        raise RuntimeError("busybox is not installed (Debian: busybox-static)")
    return found.resolve()


def make_root_tree(dest: Path, busybox: Path) -> None:
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "usr/lib"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin/busybox")
    (dest / "sbin/init").write_text(ROOT_INIT)
    (dest / "sbin/init").chmod(0o755)
    # systemd switches root only into a tree that looks like an OS.
    (dest / "usr/lib/os-release").write_text("ID=realcontent-root\nNAME=\"real-content test root\"\n")


def efi_variable(text: str) -> bytes:
    """A string EFI variable as efivarfs reads and writes it: the attributes (non-volatile, boot
    service and runtime access), then the text in UTF-16LE with a NUL, as systemd stores strings."""
    return (0x7).to_bytes(4, "little") + (text + "\0").encode("utf-16-le")


def hibernate_location(repo: RealRepo, builder: DistributionBuilder) -> str:
    """The HibernateLocation JSON that systemd-sleep on a root of this distribution would write for
    the resume disk's swap partition: its UUID, the kernel, and the root's os-release ID and
    VERSION_ID (the distribution's, as its fedora-release-common package ships them; no IMAGE_ID)."""
    release = dict(builder.mapping.package("fedora-release-common").content)["/usr/lib/os-release"]
    fields = dict(line.split("=", 1) for line in release.strip().splitlines() if "=" in line)
    return json.dumps({"uuid": UUIDS["swap"], "offset": 0, "kernelVersion": repo.kernel_version,
                       "osReleaseId": fields["ID"].strip('"'), "osReleaseVersionId": fields["VERSION_ID"].strip('"')})


def make_provisioning_initrd(dest: Path, work: Path, repo: RealRepo, builder: DistributionBuilder,
                             versions: dict[str, str], key: bytes, busybox: Path) -> None:
    """A cpio with busybox, Debian's disk tools and their libraries, the kernel modules they
    need, the root tree, the LUKS key and the provisioning script."""
    tree = work / "tree"
    info = builder.apt.show(versions)
    needed = needed_packages(PROVISION_PACKAGES, info, builder.mapping.exclude)
    debs = builder.download([info[n] for n in needed])
    for name in needed:
        extract_deb(debs[name], tree)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        if not (tree / link).exists():
            (tree / link).symlink_to(target)
    (tree / "bb").mkdir()
    shutil.copy2(busybox, tree / "bb/busybox")
    applets = subprocess.run([str(busybox), "--list"], stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bb" / applet).symlink_to("busybox")
    kver = repo.kernel_version
    src_moddir = repo.kernel_tree / "usr/lib/modules" / kver
    moddir = tree / "usr/lib/modules" / kver
    selection = select_modules(src_moddir, PROVISION_MODULES, ())
    for rel in selection.kept:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_moddir / rel, moddir / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(src_moddir / name, moddir / name)
    subprocess.run(["depmod", "-b", str(tree), kver], check=True, env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"})
    make_root_tree(tree / "rootfs", busybox)
    (tree / "key").write_bytes(key)
    (tree / "hibernate-location.var").write_bytes(efi_variable(hibernate_location(repo, builder)))
    (tree / "init").write_text(PROVISION_INIT)
    (tree / "init").chmod(0o755)
    (tree / "provision").write_text(PROVISION_SCRIPT)
    for d in ("proc", "sys", "dev", "run", "tmp"):
        (tree / d).mkdir(exist_ok=True)
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=tree, stdout=subprocess.PIPE, check=True).stdout
    with dest.open("wb") as out:
        subprocess.run(["cpio", "--create", "--format=newc", "--quiet"],
                       cwd=tree, input=names, stdout=out, check=True)


def disks_key(repo: RealRepo, busybox: Path, provision_pins: Sequence[str]) -> str:
    key = CacheKey()
    key.add("format", CACHE_FORMAT)
    key.add("module", Path(__file__).read_bytes())
    key.add("kernel", repo.kernel_version)
    key.add("repo", repo.key)
    key.add("busybox", sha256_file(busybox))
    for pin in provision_pins:
        key.add("provision", pin)
    return key.hexdigest()


def load_disks(entry: Path) -> Optional[RootDisks]:
    if not (entry / "disks.json").is_file():
        return None
    disks = RootDisks(entry)
    if not all(disks.image(n).is_file() for n in DISK_SIZES_MB):
        return None
    return disks


def build_disks(repo: RealRepo, builder: DistributionBuilder, *, timeout: float = PROVISION_TIMEOUT) -> RootDisks:
    """The root disks, from the cache or made now in the provisioning VM."""
    busybox = busybox_path()
    versions = builder.apt.closure(PROVISION_PACKAGES)
    pins = sorted(f"{n}={v}" for n, v in versions.items())
    key = disks_key(repo, busybox, pins)
    entry = builder.cache_dir / f"disks-{key}"
    if (cached := load_disks(entry)) is not None:
        log.info("root disks %s are cached", entry)
        return cached
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".disks-{key}.", dir=builder.cache_dir) as tmp:
        staged = Path(tmp) / "entry"
        staged.mkdir()
        initrd = Path(tmp) / "provision.cpio"
        make_provisioning_initrd(initrd, Path(tmp) / "work", repo, builder, versions, os.urandom(64), busybox)
        drives: list[str] = []
        for name, size in DISK_SIZES_MB.items():
            image = staged / f"{name}.img"
            with image.open("wb") as f:
                f.truncate(size << 20)
            drives += ["-drive", f"file={image},format=raw,if=virtio"]
        result = boot(kernel=repo.vmlinuz, initrd=initrd, append="console=ttyS0 panic=-1 quiet",
                      probe=BootProbe(expect=PROVISION_MARKER), timeout=timeout, memory="1024", extra_args=drives,
                      console_log=Path(tmp) / "console.log")
        if not result.ok:
            raise RuntimeError(f"the provisioning VM did not make the disks ({result.seconds:.0f}s); "
                               f"console tail:\n{result.console_tail}")
        (staged / "disks.json").write_text(json.dumps(
            {"uuids": UUIDS, "volume-group": VOLUME_GROUP, "key-label": KEY_LABEL,
             "provisioning-seconds": round(result.seconds, 1), "packages": pins}, indent=2) + "\n")
        if (cached := publish_entry(staged, entry, load_disks)) is not None:
            return cached
    log.info("made root disks %s in %.0fs", entry, time.monotonic() - started)
    disks = load_disks(entry)
    assert disks is not None
    return disks
