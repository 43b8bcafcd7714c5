"""Hand-written readers against the libraries that could replace them, side by side in one run
(`make bench`): cpio (libarchive-c), decompression (python3-zstandard vs `zstd -dc`), ELF .modinfo
and .note.dlopen (pyelftools, libkmod's modinfo). Prints times and ratios; asserts only that both
sides read the same thing. The decisions these numbers support are in ARCHITECTURE.md."""

from __future__ import annotations

import argparse
import io
import lzma
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkosi_initrd_builder.building.kmod import MODULE_SUFFIXES, modinfo
from mkosi_initrd_builder.checking.cpio import iter_cpio
from mkosi_initrd_builder.util.compress import decompress_file
from tests.conftest import TOOLS
from tests.realcontent.elfnotes import read_dlopen_notes

TOP = Path(__file__).resolve().parent.parent.parent
MODULES = 300


def best_of(fn: Callable[[], Any], runs: int = 3) -> tuple[Any, float]:
    """The result and the fastest of `runs` timings (the first run also warms the page cache)."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times)


def row(what: str, ours: float, theirs: float, label: str) -> None:
    print(f"  {what:44} ours {ours * 1000:8.1f} ms  {label} {theirs * 1000:8.1f} ms  ratio {theirs / ours:5.1f}x")


def find_initrd(explicit: Path | None) -> Path:
    if explicit:
        return explicit
    found = sorted(TOP.glob("out/**/initrd.cpio.zst"), key=lambda p: p.stat().st_size, reverse=True)
    if not found:
        raise SystemExit("no initrd.cpio.zst under out/: run `make run` first or pass --initrd")
    return found[0]


def bench_cpio(initrd: Path) -> None:
    import libarchive

    print(f"cpio: {initrd} ({initrd.stat().st_size:,} B)")
    raw, zstd_cli = best_of(lambda: subprocess.run(["zstd", "-dc", initrd], capture_output=True, check=True).stdout)
    same, in_process = best_of(lambda: decompress_file(initrd))
    assert same == raw
    row("decompress (zstd -dc vs python3-zstandard)", in_process, zstd_cli, "zstd -dc")
    ours, t_ours = best_of(lambda: {e.name: e.data for e in iter_cpio(raw)})

    def with_libarchive() -> dict[str, bytes]:
        with libarchive.memory_reader(raw) as archive:
            return {e.pathname.removeprefix("./"): b"".join(e.get_blocks()) for e in archive if e.isfile}

    theirs, t_theirs = best_of(with_libarchive)
    assert {n: d for n, d in ours.items() if n in theirs} == theirs
    row(f"parse {len(raw):,} B of cpio", t_ours, t_theirs, "libarchive")

    def whole_libarchive() -> int:
        with libarchive.file_reader(str(initrd)) as archive:
            return sum(len(b"".join(e.get_blocks())) for e in archive)

    _, t_whole = best_of(whole_libarchive)
    row("read the file (decompress + parse)", in_process + t_ours, t_whole, "libarchive")
    with libarchive.memory_reader(raw + raw) as archive:
        concatenated = sum(1 for _ in archive)
    print(f"  two concatenated archives: ours {len(list(iter_cpio(raw + raw)))} entries, libarchive {concatenated}")


def bench_modinfo(work: Path) -> None:
    from elftools.elf.elffile import ELFFile

    roots = sorted((TOOLS / "kernel/lib/modules").glob("*"))
    if not roots:
        raise SystemExit("no fixture kernel in .tools/kernel: run `make setup`")
    plain = sorted(p for p in roots[0].rglob("*") if p.name.endswith(MODULE_SUFFIXES))[:MODULES]
    packed = []
    for p in plain:  # the kernel build's own choice for Fedora: xz with CRC32
        packed.append(work / f"{p.name}.xz")
        packed[-1].write_bytes(lzma.compress(p.read_bytes(), check=lzma.CHECK_CRC32))
    blobs = [p.read_bytes() for p in plain]
    print(f"ELF .modinfo: {len(plain)} modules of the fixture kernel ({sum(map(len, blobs)):,} B)")

    def pyelftools(data: bytes) -> dict[str, list[str]]:
        info: dict[str, list[str]] = {}
        for entry in ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo").data().split(b"\0"):
            key, sep, value = entry.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
        return info

    ours, t_ours = best_of(lambda: [modinfo(b) for b in blobs])
    theirs, t_theirs = best_of(lambda: [pyelftools(b) for b in blobs])
    assert ours == theirs
    row("parse .modinfo (in memory)", t_ours, t_theirs, "pyelftools")
    _, t_kmod = best_of(lambda: subprocess.run(["modinfo", *plain], capture_output=True, check=True))
    row("parse .modinfo (one modinfo for all)", t_ours, t_kmod, "modinfo")
    _, t_ours_xz = best_of(lambda: [modinfo(decompress_file(p)) for p in packed])
    _, t_theirs_xz = best_of(lambda: [pyelftools(decompress_file(p)) for p in packed])
    _, t_kmod_xz = best_of(lambda: subprocess.run(["modinfo", *packed], capture_output=True, check=True))
    row(".ko.xz: decompress + parse", t_ours_xz, t_theirs_xz, "pyelftools")
    row(".ko.xz: decompress + parse", t_ours_xz, t_kmod_xz, "modinfo")


def bench_dlopen_notes() -> None:
    from elftools.elf.elffile import ELFFile

    # Shared objects of .tools and the host: the walk to the section is the cost measured; whether
    # they carry notes (systemd >= 256 does) only changes how much JSON is parsed afterwards.
    files = sorted(TOOLS.rglob("*.so*")) + sorted(Path("/usr/lib/x86_64-linux-gnu").glob("*.so*"))
    files = [p for p in files if p.is_file() and not p.is_symlink()][:300]
    blobs = [b for b in (p.read_bytes() for p in files) if b[:4] == b"\x7fELF"]

    def pyelftools(data: bytes) -> int:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".note.dlopen")
        return sum(1 for n in section.iter_notes() if n["n_name"] == "FDO") if section else 0

    ours, t_ours = best_of(lambda: [len(read_dlopen_notes(b)) > 0 for b in blobs])
    theirs, t_theirs = best_of(lambda: [pyelftools(b) > 0 for b in blobs])
    assert ours == theirs
    print(f"ELF .note.dlopen: {len(blobs)} shared objects ({sum(map(len, blobs)):,} B), "
          f"{sum(ours)} with notes")
    row("find the notes", t_ours, t_theirs, "pyelftools")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--initrd", type=Path, help="initrd.cpio.zst to read (default: the largest under out/)")
    args = parser.parse_args()
    bench_cpio(find_initrd(args.initrd))
    with tempfile.TemporaryDirectory(prefix="library-bench-") as tmp:
        bench_modinfo(Path(tmp))
    bench_dlopen_notes()


if __name__ == "__main__":
    main()
