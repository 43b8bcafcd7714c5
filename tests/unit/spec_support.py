"""A fixed, fake repository description for the spec tests: no RPMs, no repodata, only what
describe_kernel() and gather_inputs() read."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import Repository, RepoPackage
from mkosi_initrd_builder.spec.inputs import SpecInputs, describe_kernel, gather_inputs, release_for
from mkosi_initrd_builder.spec.template import ChangelogEntry
from mkosi_initrd_builder.building.variants import VariantSpec

UNAME = "7.0.0-16-synth"
PACKAGER = "Fixture Packager <fixture@example.org>"
DATE = datetime.date(2023, 11, 14)


def package(name: str, evr: str, arch: str = "x86_64", files: Sequence[str] = ()) -> RepoPackage:
    return RepoPackage(nevra=NEVRA.with_evr(name, evr, arch), href=f"{name}.rpm", checksum_type="sha256", checksum="0" * 64, size=1, buildtime=1,
                       provides=(name,), files=tuple(files))


def kernel_package(evr: str, uname: str = UNAME, name: str = "kernel-core") -> RepoPackage:
    moddir = f"/usr/lib/modules/{uname}"
    return package(name, evr, files=(f"{moddir}/vmlinuz", f"{moddir}/modules.dep"))


def fake_repo(*kernels: RepoPackage, extra: Sequence[RepoPackage] = ()) -> Repository:
    others = [package(n, "1-1", "noarch") for n in ("basesystem", "busybox", "initrd-init", "kmod", "linux-firmware")]
    others.append(package("systemd-boot-unsigned", "257-1",
                          files=("/usr/lib/systemd/boot/efi/linuxx64.efi.stub",)))
    return Repository(Path("/srv/fake-repo"), "1", (*(kernels or (kernel_package("7.0.42-2"),)), *others, *extra))


def first_inputs(repo: Repository, variants: Sequence[VariantSpec], uname: str = UNAME) -> SpecInputs:
    """What `spec` renders: build counter 1 and the first changelog entry."""
    from mkosi_initrd_builder.spec.bump import first_entry_lines

    kernel = describe_kernel(repo, uname)
    image = kernel.image_package.nevra
    entry = ChangelogEntry(DATE, PACKAGER, f"{image.version}-{release_for(image, 1)}", first_entry_lines(kernel, variants))
    return gather_inputs(repo, kernel, variants, release="rawhide", build_counter=1, changelog=entry.render())
