"""Hostile and broken inputs through the command line (issue 12): each ends in one line naming the
culprit with the exit status of its class, never `internal error` (70); nothing outside the
destination changes and nothing partial is left."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_VARIANTS, require_tools
from tests.support.cli import run_cli
from tests.support.kojitree import Fault

pytestmark = pytest.mark.integration

PROG = "mkosi-initrd-build"
HUGE = "9" * 400  # a size no float holds


def one_error(r: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one error line; the run must have failed with `status` and without a traceback."""
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith(PROG)]
    assert len([line for line in lines if ": error: " in line]) == 1, r.stderr
    return next(line for line in lines if ": error: " in line)


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """Every path below root (symlinks not followed): a file's size and mtime, a link's target, and
    for a directory only that it is one (a temporary name made and removed inside it changes its mtime).
    The top-level names in `skip` are not walked at all: a process may be writing below them."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = ("link", os.readlink(p)) if p.is_symlink() else \
                "dir" if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def stage(source, dest, *extra):
    return run_cli(["stage", "--source", source, "--dest", dest, "--packages", "kmod", "--retries", "2", *extra])


def copy_repo(src: Path, dest: Path) -> Path:
    """A private copy of a repository whose metadata a test may damage (the RPMs hard-linked)."""
    shutil.copytree(src, dest, copy_function=os.link, ignore=shutil.ignore_patterns("repodata"))
    shutil.copytree(src / "repodata", dest / "repodata")
    return dest


def rewrite_metadata(repo: Path, kind: str, data: bytes, *, xml: bytes | None = None) -> None:
    """Replace repodata/<kind>.xml.gz by `data` and make repomd.xml vouch for it, so only the content is
    at fault: its checksum, size and (from `xml`) open-size and open-checksum."""
    (repo / "repodata" / f"{kind}.xml.gz").write_bytes(data)
    repomd = repo / "repodata" / "repomd.xml"
    text = repomd.read_text()
    block = re.search(rf'<data type="{kind}">.*?</data>', text, re.S).group(0)
    new = re.sub(r'(<checksum type="sha256">)[0-9a-f]+', rf"\g<1>{hashlib.sha256(data).hexdigest()}", block)
    new = re.sub(r"<size>\d+", f"<size>{len(data)}", new)
    if xml is not None:
        new = re.sub(r'(<open-checksum type="sha256">)[0-9a-f]+', rf"\g<1>{hashlib.sha256(xml).hexdigest()}", new)
        new = re.sub(r"<open-size>\d+", f"<open-size>{len(xml)}", new)
    repomd.write_text(text.replace(block, new))


# --- "internal error" instead of an answer -----------------------------------------------------

def test_href_naming_a_missing_file_in_a_directory_source(tmp_path, fixture_repo):
    src = copy_repo(fixture_repo.path, tmp_path / "src")
    (missing,) = src.glob("kmod-[0-9]*.rpm")
    missing.unlink()
    before = snapshot(tmp_path)
    line = one_error(stage(src, tmp_path / "dest"))
    assert line == f"{PROG}: error: {missing.name[:-4]}: the repository names {missing}, which does not exist"
    assert snapshot(tmp_path) == before


def test_dangling_symlink_dest_is_refused(tmp_path, fixture_repo):
    (tmp_path / "dest").symlink_to(tmp_path / "nowhere" / "repo")
    before = snapshot(tmp_path)
    line = one_error(stage(fixture_repo.path, tmp_path / "dest"))
    assert line == (f"{PROG}: error: --dest: {tmp_path / 'dest'} is a symbolic link (to {tmp_path / 'nowhere/repo'}): "
                    "give the directory itself")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("options, reason", [(("ro",), "Read-only file system"), ((), "No space left on device")])
def test_read_only_or_full_dest_names_the_destination(tmp_path, fixture_repo, small_mount, options, reason):
    mnt = small_mount("mnt", "1m", *options)  # the kmod closure is about 6 MB
    before = snapshot(tmp_path)
    line = one_error(stage(fixture_repo.path, mnt / "dest"))
    assert line == f"{PROG}: error: cannot write the destination {mnt / 'dest'}: {reason}"
    assert snapshot(tmp_path) == before and os.listdir(mnt) == []


@pytest.mark.parametrize("flag, command", [("--cache", "stage"), ("--cache-dir", "build")])
def test_read_only_cache_names_the_cache(tmp_path, fixture_repo, small_mount, flag, command):
    mnt = small_mount("mnt", "1m", "ro")
    before = snapshot(tmp_path)
    if command == "stage":
        r = stage(fixture_repo.path, tmp_path / "dest", flag, mnt / "cache")
        expected = f"{PROG}: error: cache {mnt / 'cache'}: cannot create or open it: Read-only file system"
    else:
        require_tools("mkosi", "rpm2cpio", "cpio", "zstd")
        r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                     "--output", tmp_path / "out", "--variants-dir", FIXTURE_VARIANTS, "--variant", "minimal",
                     flag, mnt / "cache"])
        expected = f"{PROG}: error: cannot write the cache directory {mnt / 'cache'}: Read-only file system"
    assert one_error(r) == expected
    after = snapshot(tmp_path)
    if command == "build":
        assert after.pop("out") == "dir" and not any(k.startswith("out/") for k in after)  # made, and left empty
    assert after == before


def test_full_cache_names_the_cache_and_leaves_no_partial_entry(tmp_path, fixture_repo, small_mount):
    mnt = small_mount("mnt", "1m")
    line = one_error(stage(fixture_repo.path, tmp_path / "dest", "--cache", mnt / "cache"))
    assert line == f"{PROG}: error: cannot write the cache {mnt / 'cache'}: No space left on device"
    assert not (tmp_path / "dest").exists()
    assert list((mnt / "cache" / "tmp").iterdir()) == []
    # what fitted is in the cache whole (an entry is named by its sha256), what did not is not there
    entries = list((mnt / "cache").rglob("*.rpm"))
    assert all(hashlib.sha256(e.read_bytes()).hexdigest() == e.stem for e in entries)


def test_non_integer_package_size_names_the_package(tmp_path, fixture_repo):
    src = copy_repo(fixture_repo.path, tmp_path / "src")
    xml = gzip.decompress((src / "repodata/primary.xml.gz").read_bytes())
    kmod = re.search(rb"<package type=\"rpm\">\s*<name>kmod</name>.*?</package>", xml, re.S)
    assert kmod, "the fixture repository has kmod"
    bad = xml.replace(kmod.group(0), re.sub(rb'<size package="\d+"', b'<size package="abc"', kmod.group(0)))
    rewrite_metadata(src, "primary", gzip.compress(bad), xml=bad)
    before = snapshot(tmp_path)
    line = one_error(stage(src, tmp_path / "dest"))
    assert line == (f"{PROG}: error: repository {src}: primary metadata entry of 'kmod': <size package> is missing, "
                    "not a positive integer, or out of range")
    assert snapshot(tmp_path) == before


def test_corrupt_gzip_stream_names_the_file(tmp_path, fixture_repo):
    src = copy_repo(fixture_repo.path, tmp_path / "src")
    data = bytearray((src / "repodata/primary.xml.gz").read_bytes())
    for i in range(20, 40):
        data[i] ^= 0x55
    rewrite_metadata(src, "primary", bytes(data))  # repomd.xml vouches for the damaged file
    before = snapshot(tmp_path)
    line = one_error(stage(src, tmp_path / "dest"))
    assert line.startswith(f"{PROG}: error: repository {src}: {src}/repodata/primary.xml.gz: cannot decompress: ")
    assert snapshot(tmp_path) == before


def test_malformed_content_length_names_the_url(tmp_path, koji_tree, tree_server):
    path = f"/{koji_tree.repo_relpath}/repodata/repomd.xml"
    tree_server.faults[path] = Fault("badlength")
    line = one_error(stage(f"{tree_server.url}/{koji_tree.repo_relpath}", tmp_path / "dest"))
    assert line == (f"{PROG}: error: cannot fetch {tree_server.url}{path}: the server sent a malformed "
                    "Content-Length ('abc')")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url, reason", [
    ("http://[::1/repo", "Invalid IPv6 URL"),
    ("http://example.org:abc/repo", "Port could not be cast to integer value as 'abc'"),
    ("https://example.org:99999/repo", "Port out of range 0-65535"),
])
def test_malformed_source_url_is_named(tmp_path, url, reason):
    line = one_error(stage(url, tmp_path / "dest"))
    assert line == f"{PROG}: error: source {url!r}: not a valid URL ({reason})"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("release", ["a/b", "41\nLocalMirror=x", ""])
def test_release_that_is_no_name_is_refused_before_any_work(tmp_path, fixture_repo, release):
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", tmp_path / "out", "--variants-dir", FIXTURE_VARIANTS, "--release", release])
    line = one_error(r, status=2)  # argparse's usage error, as for any bad flag value
    assert line == (f"{PROG} build: error: argument --release: {release!r} is not a release name (letters, digits, "
                    "'.', '_', '+', '~' and '-', such as 'rawhide' or '42')")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value, shown", [(HUGE, HUGE), ('"%sG"' % HUGE, repr(HUGE + "G")),
                                          ("99999999999999999999", "99999999999999999999")])
def test_overflowing_size_budget_names_file_and_key(tmp_path, fixture_repo, value, shown):
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "big.toml").write_text(f'summary = "s"\ndescription = "d"\nsize-budget = {value}\n')
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", tmp_path / "out", "--variants-dir", variants])
    assert one_error(r) == (f"{PROG}: error: {variants / 'big.toml'}: size-budget: {shown} is larger than "
                            "9,223,372,036,854,775,807 bytes, the largest size a file can have")
    assert sorted(os.listdir(tmp_path)) == ["variants"]


@pytest.mark.parametrize("value", [HUGE, HUGE + "G", "9223372036854775808"])
def test_overflowing_max_size_is_a_usage_error(tmp_path, fixture_repo, value):
    r = stage(fixture_repo.path, tmp_path / "dest", "--max-size", value)
    line = one_error(r, status=2)
    assert line == (f"{PROG} stage: error: argument --max-size: {value!r} is larger than 9,223,372,036,854,775,807 "
                    "bytes, the largest size a file can have")
    assert os.listdir(tmp_path) == []


# --- misleading errors -------------------------------------------------------------------------

def test_full_disk_during_a_download_is_local_and_not_retried(tmp_path, koji_tree, tree_server, small_mount):
    mnt = small_mount("mnt", "1m")
    r = stage(f"{tree_server.url}/{koji_tree.repo_relpath}", mnt / "dest", "--retries", "4")
    assert one_error(r) == f"{PROG}: error: cannot write the destination {mnt / 'dest'}: No space left on device"
    assert "retrying" not in r.stderr
    rpms = [p for p in tree_server.requests_by("mkosi-initrd-build/") if p.endswith(".rpm")]
    assert len(rpms) == len(set(rpms)), "a package was fetched again after the disk was full"
    assert os.listdir(mnt) == []


@pytest.mark.parametrize("url", ["https://builder:s3cret@koji.example.org/repos/f42-build/1/x86_64",
                                 "http://:s3cret@[::1/repo", "ftp://builder:s3cret@example.org/"])
def test_password_in_source_url_is_never_printed(tmp_path, url):
    r = stage(url, tmp_path / "dest")
    line = one_error(r)
    assert "s3cret" not in r.stderr + r.stdout
    assert line.startswith(f"{PROG}: error: source '") and "://***@" in line
    assert line.endswith("a user name or password in the URL is not supported")
    assert os.listdir(tmp_path) == []


# --- outputs and destinations ------------------------------------------------------------------

def test_symlinked_dest_is_refused_and_leaves_no_debris(tmp_path, fixture_repo):
    (tmp_path / "real").mkdir()
    (tmp_path / "dest").symlink_to("real")
    before = snapshot(tmp_path)
    line = one_error(stage(fixture_repo.path, tmp_path / "dest"))
    assert line == f"{PROG}: error: --dest: {tmp_path / 'dest'} is a symbolic link (to real): give the directory itself"
    assert snapshot(tmp_path) == before


# --- containment -------------------------------------------------------------------------------

@pytest.mark.parametrize("href", ["../outside/primary.xml.gz", "/etc/primary.xml.gz", "repodata/../../x.xml.gz"])
def test_metadata_href_of_a_directory_source_stays_in_the_repository(tmp_path, fixture_repo, href):
    src = copy_repo(fixture_repo.path, tmp_path / "src")
    (tmp_path / "outside").mkdir()
    shutil.copy(src / "repodata/primary.xml.gz", tmp_path / "outside/primary.xml.gz")
    repomd = src / "repodata/repomd.xml"
    repomd.write_text(repomd.read_text().replace('href="repodata/primary.xml.gz"', f'href="{href}"'))
    before = snapshot(tmp_path)
    line = one_error(stage(src, tmp_path / "dest"))
    assert line.startswith(f"{PROG}: error: repository {src}: ") and repr(href) in line, line
    assert snapshot(tmp_path) == before


def test_dest_inside_the_source_through_a_symlink_is_refused(tmp_path, fixture_repo):
    src = copy_repo(fixture_repo.path, tmp_path / "src")
    (tmp_path / "link").symlink_to(src)
    before = snapshot(tmp_path)
    line = one_error(stage(src, tmp_path / "link" / "staged"))
    assert line == (f"{PROG}: error: --dest: {tmp_path / 'link/staged'} (really {src / 'staged'}) and the source "
                    f"{src} must not contain each other")
    assert snapshot(tmp_path) == before


def build_minimal(fixture_repo, output):
    require_tools("mkosi", "rpm2cpio", "cpio", "zstd")
    return run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                    "--output", output, "--variants-dir", FIXTURE_VARIANTS, "--variant", "minimal"])


@pytest.mark.parametrize("kind", ["user-file", "file", "symlink", "dangling-symlink"])
def test_build_refuses_to_replace_a_variant_directory_it_did_not_make(tmp_path, fixture_repo, kind):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("mine")
    target = out / "minimal"
    if kind == "user-file":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        expected = "holds notes.txt and no manifest.json of this builder: refusing to replace it (move it away or " \
                   "choose another --output)"
    elif kind == "file":
        target.write_text("mine")
        expected = "is not a directory, so no variant output of this builder: refusing to replace it"
    else:
        target.symlink_to(tmp_path / ("elsewhere" if kind == "symlink" else "nowhere"))
        expected = "is a symbolic link, so no variant output of this builder: refusing to replace it"
    before = snapshot(tmp_path)
    assert one_error(build_minimal(fixture_repo, out)) == f"{PROG}: error: output {target}: {expected}"
    assert snapshot(tmp_path) == before  # no .old-<pid>, no .build-*, the user's files as they were


def test_a_directory_the_builder_made_may_be_replaced_one_with_more_may_not(tmp_path):
    from mkosi_initrd_builder.building.build import check_variant_destination
    from mkosi_initrd_builder.util.errors import OutputError

    made = tmp_path / "minimal"
    made.mkdir()
    (made / "manifest.json").write_text('{"manifest-version": 1}\n')
    (made / "initrd.cpio.zst").write_bytes(b"x")
    check_variant_destination(made)  # a builder's earlier output: replaced without a word
    check_variant_destination(tmp_path / "absent")
    (made / "initrd.cpio.zst.bak").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"holds initrd.cpio.zst.bak, which this builder does not write"):
        check_variant_destination(made)


@pytest.mark.parametrize("package", ["kernel-core", "systemd-boot-unsigned"])
def test_build_refuses_a_kernel_or_stub_package_changed_after_the_metadata(tmp_path, fixture_repo, package):
    require_tools("mkosi", "rpm2cpio", "cpio", "zstd")
    src = copy_repo(fixture_repo.path, tmp_path / "repo")
    (rpm,) = [p for p in src.glob(f"{package}-[0-9]*.rpm")]
    data = bytearray(rpm.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the payload, past the header rpm2cpio would read
    rpm.unlink()  # a hard link to the shared fixture: write a new file
    rpm.write_bytes(bytes(data))
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "uki.toml").write_text('summary = "s"\ndescription = "d"\nformats = ["initrd", "uki"]\n'
                                       'packages = ["initrd-init"]\n')
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path)
    r = run_cli(["build", "--repo", src, "--kernel-version", fixture_repo.kernel_version, "--output", tmp_path / "out",
                 "--variants-dir", variants])
    line = one_error(r)
    assert re.fullmatch(rf"{PROG}: error: repository {re.escape(str(src))}: {re.escape(rpm.name)}: sha256 is [0-9a-f]{{64}}, "
                        r"the repository's metadata says [0-9a-f]{64} \(changed after the metadata was written\)", line), line
    assert snapshot(tmp_path) == before


def test_build_without_the_stub_package_names_it_whichever_variant_meets_it_first(tmp_path, fixture_repo):
    """The UKI stub is extracted beside mkosi: its package missing from the repository is still the
    build's one error (never each variant's), and nothing is written to OUTPUT."""
    require_tools("mkosi", "rpm2cpio", "cpio", "zstd", "createrepo_c")
    from tests.support.fixtures import make_repo

    src = copy_repo(fixture_repo.path, tmp_path / "repo")
    (stub,) = src.glob("systemd-boot-unsigned-[0-9]*.rpm")
    stub.unlink()
    shutil.rmtree(src / "repodata")
    make_repo(src)
    variants = tmp_path / "variants"
    variants.mkdir()
    for name in ("one", "two"):
        (variants / f"{name}.toml").write_text('summary = "s"\ndescription = "d"\nbase = "none"\n'
                                               'formats = ["initrd", "uki"]\npackages = ["initrd-init", "kmod"]\n')
    (tmp_path / "out").mkdir()
    r = run_cli(["build", "--repo", src, "--kernel-version", fixture_repo.kernel_version, "--output", tmp_path / "out",
                 "--variants-dir", variants, "--jobs", "2"])
    line = one_error(r)
    assert "/usr/lib/systemd/boot/efi/linuxx64.efi.stub (systemd-boot-unsigned)" in line, line
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("size", ["3m", "40m"])
def test_full_output_disk_during_the_build_names_the_output(tmp_path, fixture_repo, small_mount, size):
    """The output fills up while the build writes below it (3 MB: cpio extracting the kernel; 40 MB:
    the variant's own steps, a copy whose OSError names no file): the error names the output directory and the cause, never a bare
    [Errno 28], a tool's message alone or an internal error, and nothing half-written is left."""
    require_tools("mkosi", "rpm2cpio", "cpio", "zstd")
    mnt = small_mount("mnt", size)
    out = mnt / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", FIXTURE_VARIANTS, "--variant", "minimal"])
    assert one_error(r)
    assert f"cannot write the output directory {out}: No space left on device" in r.stderr, r.stderr
    assert not (out / "minimal").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".build-")]
