"""Our image against dracut's, side by side, on real content: image size, build time and time from
kernel start to the real root's marker for each boot case. Not a test: nothing here asserts a
timing; the goals (size <= dracut's, boot <= 1.1 x dracut's) are printed next to the ratios.

    .venv/bin/python -m tests.bench.realcontent_bench [--variant virt] [--variant generic] [--repeat N] [--no-boot]

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
import tempfile
import time
from pathlib import Path

from mkosi_initrd_builder.building.build import BuildRequest, build, read_kernel_payload
from mkosi_initrd_builder.building.kernelfacts import facts_key, kernel_module_facts
from mkosi_initrd_builder.building.kmod import (builtin_names, choose_modules, expand_default, prune_modules,
                                                select_modules)
from mkosi_initrd_builder.rpmmeta.repo import open_repository
from mkosi_initrd_builder.util.compress import ZstdSettings, decompress_file
from mkosi_initrd_builder.util.fsutil import link_or_copy_tree
from mkosi_initrd_builder.util.log import setup_logging
from mkosi_initrd_builder.building.variants import load_variants
from mkosi_initrd_builder.checking.cpio import iter_cpio, iter_cpio_members
from tests.bench import machine
from tests.bench.machine import median_of

TOP = Path(__file__).resolve().parent.parent.parent
PRODUCT_VARIANTS = TOP / "spec" / "variants"
SIZE_GOAL = 1.0
BUILD_GOAL = 1.0
SELECTION_GOAL = 0.5  # seconds, warm cache
BOOT_GOAL = 1.1
BUILD_RUNS = 3  # builds of each kind per variant, ours and dracut's; the median counts
# Where the spec has mkosi assemble the images (--workspace-dir): the tmpfs mock mounts. dracut gets a
# tmpfs for its /var/tmp in the same rows; the rows "on disk" give both tools the disk instead.
SPEC_WORKSPACE = Path("/dev/shm")
NORMALIZED_LEVEL = 15  # dracut's own zstd level
# The working setups each variant's description claims and that boot from disks alone: the broken
# cases wait out timeouts (minutes, nothing to compare), resume needs two boots and NFS a server,
# which the real-content tests set up; a variant booted with a setup it does not claim only times out.
BOOT_CASES_OF = {"virt": ("plain", "lvm", "luks"), "generic": ("plain", "lvm", "luks", "raid")}


# What a variant's description promises that dracut's --no-hostonly image cannot do, as the files
# that serve it (paths in the image, fnmatch patterns): the size row's floor is the image without
# them. Only a file whose name dracut's image lacks is left out.
BEYOND_DRACUT = (
    ("TPM2 unlocking", ("usr/lib/*/libtss2-*", "usr/share/licenses/tpm2-tss/*")),
    ("xfs_repair for fsck.mode=force", ("usr/*bin/xfs_repair", "usr/lib/*/liburcu*", "usr/share/licenses/liburcu*")),
    ("the emergency shell's tools", tuple(f"usr/*bin/{tool}" for tool in (
        "cryptsetup", "veritysetup", "integritysetup", "blockdev", "less", "busctl", "networkctl"))),
)


def beyond_dracut(ours: bytes, dracut: bytes) -> tuple[bytes, list[str], list[str]]:
    """Our archive without the members BEYOND_DRACUT names that dracut's image has no file of that
    name for (the rest, trailer and padding included, copied as it is); what was left out, and which
    capabilities it served."""
    import fnmatch
    import posixpath

    theirs = {posixpath.basename(e.name) for e in iter_cpio(dracut)}
    kept, pos, dropped, served = [], 0, [], []
    for entry, start, end in iter_cpio_members(ours):
        what = next((cap for cap, patterns in BEYOND_DRACUT if any(fnmatch.fnmatch(entry.name, p) for p in patterns)),
                    None)
        if what is not None and posixpath.basename(entry.name) not in theirs:
            kept.append(ours[pos:start])
            pos = end
            dropped.append(entry.name)
            if what not in served:
                served.append(what)
    kept.append(ours[pos:])
    return b"".join(kept), dropped, served


def ratio_row(rows: list, name: str, ours: float, theirs: float, fmt: str, goal: float | None) -> float:
    ratio = ours / theirs if theirs else float("nan")
    verdict = "" if goal is None else ("meets goal" if ratio <= goal else f"misses goal (<= {goal:.2f})")
    rows.append((name, fmt.format(ours), fmt.format(theirs), f"{ratio:.2f}", verdict))
    return ratio


def module_selection_rows(repo, variant, work: Path, rows: list) -> dict[str, float]:
    """The first variant's module selection three ways, side by side: as the builder did it before the
    per-kernel cache (its own copy of the whole tree, every module's .modinfo read from disk for the
    alias scan, the rest unlinked), from a cold read of the payload, and from a warm cache."""
    from mkosi_initrd_builder.building import kmod
    from mkosi_initrd_builder.building.build import mkosi_initrd_default_modules

    include = list(variant.kernel_modules_include)
    if "default" in include:
        include = expand_default(include, mkosi_initrd_default_modules("rawhide"))
    exclude = list(variant.kernel_modules_exclude)
    kmod._modinfo_cache.clear()
    started = time.monotonic()
    tree = work / "old-way"
    link_or_copy_tree(repo.kernel_tree, tree)
    moddir = tree / "usr/lib/modules" / repo.kernel_version
    old = select_modules(moddir, include, exclude)
    prune_modules(moddir, old)
    old_seconds = time.monotonic() - started
    shutil.rmtree(tree)

    rpm_repo = open_repository(repo.path)
    payload = read_kernel_payload(rpm_repo, repo.kernel_version)
    key = facts_key(repo.kernel_version, payload.packages)
    times = {}
    for name in ("cold", "warm"):
        started = time.monotonic()
        facts, cached = kernel_module_facts(work / "kernel-cache", key, repo.kernel_version, payload.module_data())
        new = choose_modules(facts.sizes, builtin_names(payload.builtin), include, exclude, facts.info_of)
        times[name] = time.monotonic() - started
        assert cached == (name == "warm") and new == old, "the cache changed the selection"
    rows.append((f"module selection ({len(old.kept)} of {len(facts.sizes)} modules): before the cache, per "
                 "variant, s", f"{old_seconds:.1f}", "-", "-", ""))
    rows.append(("module selection: .modinfo from the payload, cold, s", f"{times['cold']:.1f}", "-", "-", ""))
    rows.append(("module selection: warm cache (keyed by the kernel package's sha256), s", f"{times['warm']:.2f}",
                 "-", "-", "meets goal" if times["warm"] <= SELECTION_GOAL else f"misses goal (<= {SELECTION_GOAL} s)"))
    return {"selection-before": old_seconds, "selection-cold": times["cold"], "selection-warm": times["warm"]}


def bench_variant(variant, repo, distribution, disks, work: Path, repeat: int):
    """One variant against dracut: module selection, builds, sizes and boots. Returns rows, failed
    boots, figures and what the header names (dracut's version, the module count)."""
    from tests.realcontent.dracut import build_dracut_image, depmod_whole_kernel_seconds
    from tests.realcontent.disks import CASES
    from tests.realcontent.matrix import boot_case

    rows: list[tuple[str, str, str, str, str]] = []
    notes: list[str] = []
    figures: dict[str, float] = {}
    figures.update(module_selection_rows(repo, variant, work, rows))
    # Build: ours through the builder library (module selection + mkosi + ukify), dracut in its chroot;
    # ours cold (no kernel cache: a koji build) and again with the kernel cache the first one wrote,
    # both with the spec's workspace, and warm once more with the workspace on disk (below OUTPUT).
    # BUILD_RUNS rounds of each (ours three ways, dracut with a tmpfs and on disk, dracut's `depmod -a`)
    # and the medians: one build on this machine moves by seconds, and a slow patch hits every side.
    runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [], "warm-disk": []}
    dracuts: dict[str, list] = {"tmpfs": [], "disk": []}
    depmods = []
    for i in range(BUILD_RUNS):
        for name in ("cold", "warm", "warm-disk"):
            started = time.monotonic()
            result = build(BuildRequest(repo=repo.path, kernel_version=repo.kernel_version, output=work / f"{name}-{i}",
                                        variants=(variant,), kernel_cache_dir=work / f"build-kernel-cache-{i}",
                                        workspace_dir=None if name.endswith("-disk") else SPEC_WORKSPACE))[0]
            runs[name].append((time.monotonic() - started, result.mkosi_seconds))
        ours_image = result.directory / "initrd.cpio.zst"
        modules = json.loads((result.directory / "manifest.json").read_text())["kernel-modules"]
        for where in dracuts:
            dracuts[where].append(build_dracut_image(repo, distribution, modules,
                                                     work / f"dracut-{where}-{i}" / "dracut.img",
                                                     firmware_from=ours_image, scratch_on_tmpfs=where == "tmpfs"))
        # Each tool pays its per-kernel step cold: our scan of every module's .modinfo, dracut's world
        # `depmod -a` over the whole kernel (kernel-install runs it before dracut, once per kernel).
        depmods.append(depmod_whole_kernel_seconds(repo, distribution))
    builds = {name: median_of(r) for name, r in runs.items()}
    ours_build = builds["cold"][0]
    dracut = median_of(dracuts["tmpfs"], key=lambda d: d.total_seconds)
    dracut_disk = median_of(dracuts["disk"], key=lambda d: d.total_seconds)
    depmod_all = median_of(depmods)

    ours_cpio, dracut_cpio = decompress_file(ours_image), decompress_file(dracut.path)
    mb = 1024 * 1024
    normalized = ZstdSettings(NORMALIZED_LEVEL)  # the project's compressor at dracut's level
    ours_zstd = f"-{variant.compress_level}" + "".join(f" {k}={v}" for k, v in variant.zstd_parameters.values)
    figures["size-as-built"] = ratio_row(
        rows, f"image size, as built (zstd; ours {ours_zstd}, dracut -{NORMALIZED_LEVEL}), MiB",
        ours_image.stat().st_size / mb, dracut.path.stat().st_size / mb, "{:.2f}", SIZE_GOAL)
    figures["size-equal-compression"] = ratio_row(
        rows, f"image size, both zstd -{NORMALIZED_LEVEL}, MiB", len(normalized.compress(ours_cpio)) / mb,
        len(normalized.compress(dracut_cpio)) / mb, "{:.2f}", SIZE_GOAL)
    if variant.zstd_parameters.values:
        ratio_row(rows, f"  both with our settings ({ours_zstd}), MiB", ours_image.stat().st_size / mb,
                  len(variant.compression.compress(dracut_cpio)) / mb, "{:.2f}", None)
    ratio_row(rows, "image size, uncompressed cpio, MiB", len(ours_cpio) / mb, len(dracut_cpio) / mb,
              "{:.1f}", None)
    floor_cpio, dropped, served = beyond_dracut(ours_cpio, dracut_cpio)
    if dropped:
        figures["size-without-beyond-dracut"] = ratio_row(
            rows, f"  as built, without what the description promises and dracut's image cannot do "
                  f"({', '.join(served)}: {len(dropped)} files, {(len(ours_cpio) - len(floor_cpio)) / mb:.1f} MiB "
                  "of cpio), MiB", len(variant.compression.compress(floor_cpio)) / mb,
            dracut.path.stat().st_size / mb, "{:.2f}", None)
    ratio_row(rows, "build time, cold kernel cache vs dracut + depmod -a of the whole kernel, s", ours_build,
              dracut.total_seconds + depmod_all, "{:.1f}", BUILD_GOAL)
    ratio_row(rows, "  cold vs dracut on a module tree depmod already saw (no per-kernel step), s", ours_build,
              dracut.total_seconds, "{:.1f}", None)
    ratio_row(rows, "  per-kernel step: .modinfo scan (cold - warm) / depmod -a of all modules, s",
              max(0.0, builds["cold"][0] - builds["warm"][0]), depmod_all, "{:.1f}", None)
    ratio_row(rows, "build time, whole tool run, warm kernel cache, s", builds["warm"][0], dracut.total_seconds,
              "{:.1f}", BUILD_GOAL)
    ratio_row(rows, "  warm, both with the workspace on disk (ours below OUTPUT, dracut's /var/tmp), s",
              builds["warm-disk"][0], dracut_disk.total_seconds, "{:.1f}", None)
    for name, (total, mkosi) in builds.items():
        ratio_row(rows, f"  {name}: mkosi alone / dracut alone, s", mkosi, dracut.seconds, "{:.1f}", None)
        ratio_row(rows, f"  {name}: outside mkosi / dracut outside dracut, s", total - mkosi,
                  dracut.total_seconds - dracut.seconds, "{:.1f}", None)
    figures.update({"build-cold": builds["cold"][0] / (dracut.total_seconds + depmod_all),
                    "build-cold-prepared-tree": builds["cold"][0] / dracut.total_seconds,
                    "depmod-all-seconds": depmod_all,
                    "build-warm": builds["warm"][0] / dracut.total_seconds,
                    "build-warm-disk": builds["warm-disk"][0] / dracut_disk.total_seconds,
                    "mkosi-alone": builds["warm"][1] / dracut.seconds,
                    "dracut-seconds": dracut.total_seconds, "ours-cold-seconds": builds["cold"][0],
                    "ours-warm-seconds": builds["warm"][0]})

    # Boot: alternate ours and dracut's so that a slow patch of the host hits both.
    for case in () if disks is None else [CASES[name] for name in BOOT_CASES_OF[variant.name]]:
        uptimes: dict[str, list[float]] = {"ours": [], "dracut": []}
        walls: dict[str, list[float]] = {"ours": [], "dracut": []}
        for _ in range(repeat):
            for who, image in (("ours", ours_image), ("dracut", dracut.path)):
                r = boot_case(case.name, disks, kernel=repo.vmlinuz, initrd=image)
                if not r.ok or r.uptime is None:
                    # A marker line the console garbled carries no uptime: noted, not counted.
                    notes.append(f"{variant.name}: {who} {r.describe()}"
                                 + ("" if r.uptime is not None else " (no uptime on the marker line)"))
                    continue
                uptimes[who].append(r.uptime)
                walls[who].append(r.wall_seconds)
        if uptimes["ours"] and uptimes["dracut"]:
            figures[f"boot {case.name}"] = ratio_row(
                rows, f"boot {case.name}: kernel start -> root marker, s", statistics.median(uptimes["ours"]),
                statistics.median(uptimes["dracut"]), "{:.1f}", BOOT_GOAL)
            ratio_row(rows, f"boot {case.name}: QEMU start -> root marker (wall), s",
                      statistics.median(walls["ours"]), statistics.median(walls["dracut"]), "{:.1f}", None)
    header = (f"{variant.name} (mkosi-initrd, builder) vs dracut {dracut.dracut_version} --no-hostonly, kernel "
              f"{repo.kernel_version}, {len(modules)} kernel modules and the same firmware each, {repeat} boot(s) "
              f"per case, median of {BUILD_RUNS} builds each, workspace on a tmpfs for both tools ({SPEC_WORKSPACE}, "
              "as the spec builds; dracut's /var/tmp) unless a row says otherwise, QEMU TCG")
    return rows, notes, figures, header


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.realcontent_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", choices=("virt", "generic"),
                        help="product variant to compare, repeatable (default: virt and generic)")
    parser.add_argument("--repeat", type=int, default=1, help="boots per case and image; the median counts")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-boot", action="store_true", help="sizes and build times only")
    parser.add_argument("--figures", type=Path, help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    load_before, cpu_start = machine.load1(), machine.CpuUse.now()
    setup_logging(quiet=True)
    logging.getLogger("tests").setLevel(logging.WARNING)

    from tests.realcontent.disks import build_disks
    from tests.realcontent.distribution import DistributionBuilder

    distribution = DistributionBuilder()
    repo = distribution.build()
    disks = None if args.no_boot else build_disks(repo, distribution)
    names = tuple(args.variant or ("virt", "generic"))
    work = Path(tempfile.mkdtemp(prefix="realcontent-bench-"))
    results = {}
    try:
        for variant in load_variants(PRODUCT_VARIANTS, names):
            (work / variant.name).mkdir(parents=True)
            results[variant.name] = bench_variant(variant, repo, distribution, disks, work / variant.name, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    failed = []
    for name, (rows, notes, _, header) in results.items():
        width = max(len(r[0]) for r in rows)
        print(f"\n{header}")
        print(machine.describe(load_before, machine.load1(), cpu_start) + "\n")
        print(f"{'measure':{width}}  {'ours':>8}  {'dracut':>8}  {'ratio':>5}  goal")
        for row_name, ours, theirs, ratio, verdict in rows:
            print(f"{row_name:{width}}  {ours:>8}  {theirs:>8}  {ratio:>5}  {verdict}")
        for n in notes:
            print(f"FAILED BOOT: {n}")
        failed += notes
    if args.figures is not None:
        args.figures.write_text(json.dumps({name: r[2] for name, r in results.items()}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
