"""Reading repodata: what a well-formed repository yields, and what hostile metadata cannot do
(expand entities, expand past what it promises, name files outside repodata/)."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from mkosi_initrd_builder.rpmmeta import repo as repomod
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import open_repository
from mkosi_initrd_builder.util.errors import RepositoryError

HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n{doctype}<metadata xmlns="http://linux.duke.edu/metadata/common" '
        'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{count}">\n')
PACKAGE = ('<package type="rpm"><name>{name}</name><arch>x86_64</arch><version epoch="{epoch}" ver="1.0" rel="2"/>'
           '<checksum type="sha256" pkgid="YES">{checksum}</checksum><summary>s</summary>'
           '<description>{description}</description><time file="1" build="1700000000"/>'
           '<size package="1234" installed="1" archive="1"/><location href="Packages/{name}.rpm"/>'
           '<format><rpm:provides><rpm:entry name="{name}"/><rpm:entry name="{name}-cap"/></rpm:provides>'
           '<file>/usr/lib/modules/6.1.0-1/vmlinuz</file></format></package>\n')
FILELISTS = ('<?xml version="1.0" encoding="UTF-8"?>\n<filelists xmlns="http://linux.duke.edu/metadata/filelists" '
             'packages="1"><package pkgid="{checksum}" name="{name}" arch="x86_64"><version epoch="0" ver="1.0" '
             'rel="2"/><file>/usr/lib/modules/6.1.0-1/vmlinuz</file><file>/usr/lib/modules/6.1.0-1/modules.dep'
             '</file></package></filelists>\n')


def primary_xml(*names: str, doctype: str = "", description: str = "d", epoch: str = "0") -> bytes:
    body = "".join(PACKAGE.format(name=n, epoch=epoch, checksum=hashlib.sha256(n.encode()).hexdigest(),
                                  description=description) for n in names)
    return (HEAD.format(doctype=doctype, count=len(names)) + body + "</metadata>\n").encode()


def write_repo(root: Path, primary: bytes, *, suffix: str = ".gz", open_size: int | None = None,
               href: str | None = None, filelists: bytes | None = None) -> Path:
    (root / "repodata").mkdir(parents=True, exist_ok=True)
    entries = []
    for kind, xml in (("primary", primary), ("filelists", filelists)):
        if xml is None:
            continue
        data = compress(xml, suffix)
        name = f"repodata/{kind}.xml{suffix}"
        (root / name).write_bytes(data)
        size = len(xml) if open_size is None else open_size
        entries.append(f'<data type="{kind}"><checksum type="sha256">{hashlib.sha256(data).hexdigest()}</checksum>'
                       f'<open-size>{size}</open-size><location href="{href if kind == "primary" and href else name}"/>'
                       '</data>')
    (root / "repodata" / "repomd.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">'
        f'<revision>42</revision>{"".join(entries)}</repomd>\n')
    return root


def compress(xml: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(xml)
    if suffix == ".zst":
        import zstandard
        return zstandard.ZstdCompressor().compress(xml)
    if suffix == ".zck":
        import tempfile

        import createrepo_c
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "x.xml").write_bytes(xml)
            createrepo_c.compress_file(f"{tmp}/x.xml", f"{tmp}/x.xml.zck", createrepo_c.ZCK_COMPRESSION)
            return (Path(tmp) / "x.xml.zck").read_bytes()
    assert suffix == "", suffix
    return xml


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".zck", ""])
def test_packages_are_read_with_their_identity_location_and_provides(tmp_path, suffix):
    checksum = hashlib.sha256(b"kernel-core").hexdigest()
    repo = open_repository(write_repo(tmp_path, primary_xml("kernel-core", "kmod"), suffix=suffix,
                                      filelists=FILELISTS.format(checksum=checksum, name="kernel-core").encode()))
    assert repo.revision == "42"
    kernel, kmod = repo.packages
    assert kernel.nevra == NEVRA("kernel-core", 0, "1.0", "2", "x86_64")
    assert (kernel.href, kernel.checksum, kernel.size, kernel.buildtime) == \
        ("Packages/kernel-core.rpm", checksum, 1234, 1700000000)
    assert kernel.provides == ("kernel-core", "kernel-core-cap")
    assert kernel.files == ("/usr/lib/modules/6.1.0-1/vmlinuz", "/usr/lib/modules/6.1.0-1/modules.dep")
    assert repo.kernel_versions() == ["6.1.0-1"] and repo.providers("kmod-cap >= 1") == [kmod]


def test_entities_are_never_expanded(tmp_path):
    laughs = ('<!DOCTYPE metadata [<!ENTITY a "aaaaaaaaaa">'
              + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + "]>")
    write_repo(tmp_path, primary_xml("x", doctype=laughs, description="&j;"))
    with pytest.raises(RepositoryError, match="unreadable repodata: .*Entity 'j' not defined"):
        open_repository(tmp_path, with_files=False)


def test_external_entities_are_never_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("password")
    write_repo(tmp_path / "r", primary_xml("x", doctype=f'<!DOCTYPE metadata [<!ENTITY s SYSTEM "{secret.as_uri()}">]>',
                                           description="&s;"))
    with pytest.raises(RepositoryError, match="Entity 's' not defined"):
        open_repository(tmp_path / "r", with_files=False)


def test_repomd_entity_bomb_is_refused(tmp_path):
    write_repo(tmp_path, primary_xml("x"))
    laughs = ('<?xml version="1.0"?><!DOCTYPE repomd [<!ENTITY a "aaaaaaaaaa">'
              + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
              + ']><repomd xmlns="http://linux.duke.edu/metadata/repo"><revision>&j;</revision></repomd>')
    (tmp_path / "repodata" / "repomd.xml").write_text(laughs)
    with pytest.raises(RepositoryError, match="unreadable repodata"):
        open_repository(tmp_path, with_files=False)


def test_metadata_expanding_past_its_promised_size_is_cut_there(tmp_path):
    """A gzip of 10 MB of one description: repomd.xml promised 5,000 bytes, so reading stops there."""
    write_repo(tmp_path, primary_xml("x", description="A" * (10 << 20)), open_size=5000)
    with pytest.raises(RepositoryError, match="primary.xml.gz expands to more than repomd.xml's open-size for it, "
                                              "5,000 bytes"):
        open_repository(tmp_path, with_files=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "repodata"]


def test_metadata_expanding_past_the_cap_is_refused_whatever_repomd_says(tmp_path, monkeypatch):
    monkeypatch.setattr(repomod, "MAX_METADATA_BYTES", 1 << 20)
    write_repo(tmp_path, primary_xml("x", description="A" * (2 << 20)), open_size=1 << 40)
    with pytest.raises(RepositoryError, match="expands to more than the limit for metadata, 1,048,576 bytes"):
        open_repository(tmp_path, with_files=False)


@pytest.mark.parametrize("href", ["../outside.xml.gz", "repodata/../../outside.xml.gz", "/etc/passwd",
                                  "repodata/sub/primary.xml.gz", "primary.xml.gz", "http://example.org/primary.xml.gz"])
def test_metadata_outside_repodata_is_refused(tmp_path, href):
    (tmp_path / "outside.xml.gz").write_bytes(gzip.compress(primary_xml("x")))
    write_repo(tmp_path / "repo", primary_xml("x"), href=href)
    with pytest.raises(RepositoryError, match="repomd.xml's primary entry"):
        open_repository(tmp_path / "repo", with_files=False)


def test_metadata_symlinked_out_of_repodata_is_refused(tmp_path):
    (tmp_path / "elsewhere.xml.gz").write_bytes(gzip.compress(primary_xml("x")))
    write_repo(tmp_path / "repo", primary_xml("x"))
    link = tmp_path / "repo" / "repodata" / "primary.xml.gz"
    link.unlink()
    os.symlink(tmp_path / "elsewhere.xml.gz", link)
    with pytest.raises(RepositoryError, match="resolves to .*elsewhere.xml.gz, outside repodata/"):
        open_repository(tmp_path / "repo", with_files=False)


def test_damaged_compression_and_bad_numbers_are_named(tmp_path):
    write_repo(tmp_path / "a", primary_xml("x"))
    (tmp_path / "a" / "repodata" / "primary.xml.gz").write_bytes(gzip.compress(primary_xml("x"))[:60])
    with pytest.raises(RepositoryError, match="primary.xml.gz: .*cannot decompress"):
        open_repository(tmp_path / "a", with_files=False)
    write_repo(tmp_path / "b", primary_xml("x", epoch="one"))
    with pytest.raises(RepositoryError, match="primary metadata entry of 'x'"):
        open_repository(tmp_path / "b", with_files=False)


def test_malformed_xml_is_one_line_naming_the_repositorys_file(tmp_path):
    write_repo(tmp_path, primary_xml("x").replace(b"</name>", b"</oops>"))
    with pytest.raises(RepositoryError) as e:
        open_repository(tmp_path, with_files=False)
    assert str(e.value).startswith(f"repository {tmp_path}: unreadable repodata: Parse error 'primary.xml.gz' ")
    assert "\n" not in str(e.value) and "mkosi-initrd-repodata-" not in str(e.value)
