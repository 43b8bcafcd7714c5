"""Write a repository's metadata (repomd.xml, primary, filelists, other) in-process with createrepo_c's
bindings, from package headers already read and checksums already computed, so no file is read twice
(what the createrepo_c command would do: read every file again and hash it again).

The output is what `createrepo_c --no-database` writes (gzip-compressed XML, file names prefixed with
their checksum), except that it is reproducible: the revision and every timestamp are the given
revision, each package's file time is the caller's, and the packages come in the caller's order.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import createrepo_c

from mkosi_initrd_builder.util.errors import VerificationError

# createrepo_c's own default for --changelog-limit.
CHANGELOG_LIMIT = 10
METADATA_KINDS = (("primary", createrepo_c.PrimaryXmlFile), ("filelists", createrepo_c.FilelistsXmlFile),
                  ("other", createrepo_c.OtherXmlFile))
# createrepo_c reads a package from a path; an in-memory file (memfd) gives the header bytes one.
_PROC_FDS = Path("/proc/self/fd")


@functools.cache
def _have_proc_fds() -> bool:
    return _PROC_FDS.is_dir()


def package_from_header(lead_and_header: bytes, *, href: str, size: int, sha256: str, file_time: int,
                        package: str, origin: str) -> "createrepo_c.Package":
    """The createrepo_c package of a file whose first bytes (lead, signature and header, up to where
    the payload starts) are `lead_and_header` and whose whole bytes are `size` long with the digest
    `sha256`. createrepo_c parses the header itself (dependencies, files, changelogs as its command
    does); only the header's bytes are handed to it, so it hashes those instead of the file, and the
    checksum, size and file time are then set to the file's. VerificationError naming the package
    when createrepo_c cannot read the header."""
    try:
        if _have_proc_fds():
            fd = os.memfd_create("mkosi-initrd-header", os.MFD_CLOEXEC)
            try:
                os.write(fd, lead_and_header)
                pkg = createrepo_c.package_from_rpm(f"{_PROC_FDS}/{fd}", createrepo_c.SHA256, href, None,
                                                    CHANGELOG_LIMIT)
            finally:
                os.close(fd)
        else:
            with tempfile.NamedTemporaryFile(prefix="mkosi-initrd-header-") as f:
                f.write(lead_and_header)
                f.flush()
                pkg = createrepo_c.package_from_rpm(f.name, createrepo_c.SHA256, href, None, CHANGELOG_LIMIT)
    except createrepo_c.CreaterepoCError as e:
        raise VerificationError(package, origin, f"createrepo_c cannot read its header: {str(e).strip()}") from None
    pkg.pkgId = sha256
    pkg.checksum_type = "sha256"
    pkg.size_package = size
    pkg.time_file = file_time
    return pkg


def write_repodata(repo: Path, packages: Sequence["createrepo_c.Package"], revision: int) -> None:
    """Write `repo`/repodata for `packages` (in this order); the directory appears complete or not at all."""
    final = repo / "repodata"
    work = Path(tempfile.mkdtemp(prefix=".repodata.", dir=repo))
    try:
        records = []
        for kind, xml_file in METADATA_KINDS:
            path = work / f"{kind}.xml.gz"
            out = xml_file(str(path), createrepo_c.GZ_COMPRESSION)
            out.set_num_of_pkgs(len(packages))
            for pkg in packages:
                out.add_pkg(pkg)
            out.close()
            record = createrepo_c.RepomdRecord(kind, str(path))
            record.fill(createrepo_c.SHA256)
            record.timestamp = revision
            record.rename_file()
            records.append(record)
        repomd = createrepo_c.Repomd()
        repomd.set_revision(str(revision))
        for record in records:
            repomd.set_record(record)
        (work / "repomd.xml").write_text(repomd.xml_dump())
        os.chmod(work, 0o755)
        for f in work.iterdir():
            os.chmod(f, 0o644)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
