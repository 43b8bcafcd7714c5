"""Our image against dracut's, side by side, on real content: image size, build time and time from
kernel start to the real root's marker for each boot case. Not a test: nothing here asserts a
timing; the goals (size <= dracut's, boot <= 1.1 x dracut's) are printed next to the ratios.

    .venv/bin/python -m tests.bench.realcontent_bench [--variant virt] [--repeat N]

Both images are built for the same kernel with the same kernel modules (dracut gets the module
list our build kept) and from the same Debian trixie userspace; they boot with the same kernel,
disks and command line in QEMU (TCG), one after the other.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mkosi_initrd_builder.building.build import BuildRequest, build
from mkosi_initrd_builder.util.log import setup_logging
from mkosi_initrd_builder.building.variants import load_variants

TOP = Path(__file__).resolve().parent.parent.parent
PRODUCT_VARIANTS = TOP / "spec" / "variants"
SIZE_GOAL = 1.0
BOOT_GOAL = 1.1
NORMALIZED_LEVEL = 15  # dracut's own zstd level; mkosi uses 3


def zstd_size(cpio: bytes, level: int) -> int:
    return len(subprocess.run(["zstd", "-q", f"-{level}", "-T0", "-c"], input=cpio, stdout=subprocess.PIPE,
                              check=True).stdout)


def uncompressed(image: Path) -> bytes:
    return subprocess.run(["zstd", "-dc", str(image)], stdout=subprocess.PIPE, check=True).stdout


def ratio_row(rows: list, name: str, ours: float, theirs: float, fmt: str, goal: float | None) -> None:
    ratio = ours / theirs if theirs else float("nan")
    verdict = "" if goal is None else ("meets goal" if ratio <= goal else f"misses goal (<= {goal:.2f})")
    rows.append((name, fmt.format(ours), fmt.format(theirs), f"{ratio:.2f}", verdict))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.realcontent_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="virt", help="product variant to compare (default: virt)")
    parser.add_argument("--repeat", type=int, default=1, help="boots per case and image; the median counts")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    setup_logging(quiet=True)
    logging.getLogger("tests").setLevel(logging.WARNING)

    from tests.realcontent.disks import BOOT_CASES, build_disks
    from tests.realcontent.distribution import DistributionBuilder
    from tests.realcontent.dracut import build_dracut_image
    from tests.realcontent.matrix import boot_case

    distribution = DistributionBuilder()
    repo = distribution.build()
    disks = build_disks(repo, distribution)
    variant = next(v for v in load_variants(PRODUCT_VARIANTS, (args.variant,)))
    work = Path(tempfile.mkdtemp(prefix="realcontent-bench-"))
    rows: list[tuple[str, str, str, str, str]] = []
    notes: list[str] = []
    try:
        # Build: ours through the builder library (module selection + mkosi + ukify), dracut in its chroot.
        started = time.monotonic()
        result = build(BuildRequest(repo=repo.path, kernel_version=repo.kernel_version, output=work / "ours",
                                    variants=(variant,)))[0]
        ours_build = time.monotonic() - started
        ours_image = result.directory / "initrd.cpio.zst"
        modules = json.loads((result.directory / "manifest.json").read_text())["kernel-modules"]
        dracut = build_dracut_image(repo, distribution, modules, work / "dracut" / "dracut.img",
                                    firmware_from=ours_image)

        ours_cpio, dracut_cpio = uncompressed(ours_image), uncompressed(dracut.path)
        mb = 1024 * 1024
        ratio_row(rows, "image size, as built (zstd; mkosi -3, dracut -15), MiB",
                  ours_image.stat().st_size / mb, dracut.path.stat().st_size / mb, "{:.1f}", SIZE_GOAL)
        ratio_row(rows, f"image size, both zstd -{NORMALIZED_LEVEL}, MiB", zstd_size(ours_cpio, NORMALIZED_LEVEL) / mb,
                  zstd_size(dracut_cpio, NORMALIZED_LEVEL) / mb, "{:.1f}", SIZE_GOAL)
        ratio_row(rows, "image size, uncompressed cpio, MiB", len(ours_cpio) / mb, len(dracut_cpio) / mb,
                  "{:.1f}", None)
        ratio_row(rows, "build time, whole tool run, s", ours_build, dracut.total_seconds, "{:.1f}", None)
        ratio_row(rows, "build time, mkosi alone / dracut alone, s", result.mkosi_seconds, dracut.seconds,
                  "{:.1f}", None)

        # Boot: alternate ours and dracut's so that a slow patch of the host hits both.
        for case in BOOT_CASES:
            uptimes: dict[str, list[float]] = {"ours": [], "dracut": []}
            walls: dict[str, list[float]] = {"ours": [], "dracut": []}
            for _ in range(args.repeat):
                for who, image in (("ours", ours_image), ("dracut", dracut.path)):
                    r = boot_case(case.name, disks, kernel=repo.vmlinuz, initrd=image)
                    if not r.ok:
                        notes.append(f"{who} {r.describe()}")
                        continue
                    assert r.uptime is not None
                    uptimes[who].append(r.uptime)
                    walls[who].append(r.wall_seconds)
            if uptimes["ours"] and uptimes["dracut"]:
                ratio_row(rows, f"boot {case.name}: kernel start -> root marker, s",
                          statistics.median(uptimes["ours"]), statistics.median(uptimes["dracut"]), "{:.1f}",
                          BOOT_GOAL)
                ratio_row(rows, f"boot {case.name}: QEMU start -> root marker (wall), s",
                          statistics.median(walls["ours"]), statistics.median(walls["dracut"]), "{:.1f}", None)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"\n{args.variant} (mkosi-initrd, builder) vs dracut {dracut.dracut_version} --no-hostonly, kernel "
          f"{repo.kernel_version}, {len(modules)} kernel modules each, {args.repeat} boot(s) per case, QEMU TCG\n")
    print(f"{'measure':{width}}  {'ours':>8}  {'dracut':>8}  {'ratio':>5}  goal")
    for name, ours, theirs, ratio, verdict in rows:
        print(f"{name:{width}}  {ours:>8}  {theirs:>8}  {ratio:>5}  {verdict}")
    for n in notes:
        print(f"FAILED BOOT: {n}")
    return 1 if notes else 0


if __name__ == "__main__":
    raise SystemExit(main())
