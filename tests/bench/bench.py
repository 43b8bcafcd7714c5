"""`make bench`: speed figures measured side by side in one run, printed as ratios. Not a test:
nothing here asserts a timing; the goals are printed next to what was measured."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mkosi_initrd_builder.building.build import BuildRequest, build
from mkosi_initrd_builder.util.log import setup_logging
from mkosi_initrd_builder.util.tools import tool_version
from mkosi_initrd_builder.building.variants import load_variants
from mkosi_initrd_builder.util.compress import decompress_file
from tests.bench import machine
from tests.bench.machine import median_of

TOP = Path(__file__).resolve().parent.parent.parent
FIXTURE_VARIANTS = TOP / "tests" / "fixtures" / "variants"


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def four_variants(directory: Path) -> Path:
    """Four fixture variants: the two shipped ones and a renamed copy of each."""
    directory.mkdir()
    for src in sorted(FIXTURE_VARIANTS.glob("*.toml")):
        shutil.copy(src, directory / src.name)
        shutil.copy(src, directory / f"{src.stem}2.toml")
    return directory


def bench_builder(work: Path, repo, rows: list[tuple[str, str, str]], figures: dict) -> None:
    variants = {v.name: v for v in load_variants(four_variants(work / "variants"))}
    base = BuildRequest(repo=repo.path, kernel_version=repo.kernel_version, output=work / "x",
                        variants=(variants["minimal"],))

    # 1. one variant: total build time and the part mkosi itself takes; three builds, the median
    # counts (the share outside mkosi moves with how long mkosi took on a shared machine)
    runs = []
    for i in range(3):
        # as a fresh command-line run: the tools' versions are asked again (the process caches them)
        tool_version.cache_clear()
        results, total = timed(lambda i=i: build(BuildRequest(**{**base.__dict__, "output": work / f"one{i}"})))
        runs.append((total, results[0].mkosi_seconds, results[0].format_seconds))
    total, mkosi, formats = median_of(runs, key=lambda r: (r[0] - r[1]) / r[0])
    shares = ", ".join(f"{(t - m) / t:.0%}" for t, m, _ in runs)
    rows.append(("one variant (minimal): build wall time", f"{total:.1f}s", "the median of three by share outside mkosi"))
    rows.append(("  of which mkosi itself", f"{mkosi:.1f}s", f"{mkosi / total:.0%} of the build"))
    # The builder compresses mkosi's cpio since zstd-parameters (mkosi did, with CompressLevel=): that
    # step is timed alone here, on the same archive with the same settings, and the goal counts the
    # rest, the builder's own work around the image, as it did before the move.
    initrd = work / "one0" / "minimal" / "initrd.cpio.zst"
    cpio = decompress_file(initrd)
    zstd_watch = time.perf_counter()
    variants["minimal"].compression.compress(cpio)
    zstd_seconds = time.perf_counter() - zstd_watch
    rows.append(("  outside mkosi", f"{total - mkosi:.1f}s",
                 f"{(total - mkosi) / total:.0%} of the build ({shares})"))
    rows.append(("    the initrd's zstd (mkosi's step until the builder took it over)", f"{zstd_seconds:.2f}s",
                 f"{zstd_seconds / total:.0%} of the build, timed alone on the same cpio"))
    # What bounds that share: the formats' own steps after mkosi (the UKI's is one ukify run).
    formats_total = sum(formats.values())
    steps = formats_total - zstd_seconds
    rows.append(("    the formats' other steps after mkosi", f"{steps:.1f}s",
                 f"{steps / total:.0%} of the build ("
                 + ", ".join(f"{k} {v:.2f} s" for k, v in formats.items()) + "; initrd's with zstd, uki's one ukify run)"))
    rows.append(("    the builder's own work", f"{total - mkosi - formats_total:.1f}s",
                 f"{(total - mkosi - formats_total) / total:.0%} of the build: repository, kernel, modules, "
                 "checks, manifest"))
    rows.append(("  outside mkosi and its former zstd step", f"{total - mkosi - zstd_seconds:.1f}s",
                 f"{(total - mkosi - zstd_seconds) / total:.0%} of the build, goal <= 10%"))
    figures["outside-mkosi"] = (total - mkosi - zstd_seconds) / total
    figures["outside-mkosi-zstd"] = zstd_seconds / total

    # 2. four variants with --jobs 2 against four separate single-variant builds
    four = tuple(variants[n] for n in sorted(variants))
    # before and after the separate ones (their mean counts), so a change of load hits both sides
    cpu_start = machine.CpuUse.now()
    parallels = []

    def parallel_build(i: int) -> None:
        tool_version.cache_clear()
        parallels.append(timed(lambda: build(BuildRequest(**{**base.__dict__, "output": work / f"par{i}",
                                                             "variants": four, "jobs": 2})))[1])

    parallel_build(0)
    separate = 0.0
    for v in four:
        tool_version.cache_clear()
        _, t = timed(lambda v=v: build(BuildRequest(**{**base.__dict__, "output": work / f"sep-{v.name}",
                                                       "variants": (v,)})))
        separate += t
    parallel_build(1)
    parallel = statistics.mean(parallels)
    rows.append(("4 variants, --jobs 2, one build", f"{parallel:.1f}s",
                 f"the mean of {parallels[0]:.1f} s before and {parallels[1]:.1f} s after the separate builds"))
    rows.append(("4 separate single-variant builds", f"{separate:.1f}s", ""))
    others = machine.CpuUse.now().others_since(cpu_start)
    rows.append(("  ratio parallel / separate", f"{parallel / separate:.2f}",
                 f"goal <= 0.50 (everything else kept {others:.2f} of {os.cpu_count()} CPUs busy meanwhile)"))
    figures["jobs-ratio"] = parallel / separate
    figures["jobs-others"] = others

    # 3. warm package cache against a cold one (same --cache-dir, built twice)
    cache = work / "pkgcache"
    _, cold = timed(lambda: build(BuildRequest(**{**base.__dict__, "output": work / "cold", "cache_dir": cache})))
    _, warm = timed(lambda: build(BuildRequest(**{**base.__dict__, "output": work / "warm", "cache_dir": cache})))
    rows.append(("cold package cache rebuild", f"{cold:.1f}s", ""))
    rows.append(("warm package cache rebuild", f"{warm:.1f}s", ""))
    rows.append(("  ratio warm / cold", f"{warm / cold:.2f}",
                 "file:// repositories are not cached by dnf, so little gain is expected"))


def bench_main_job(work: Path, rows: list[tuple[str, str, str]]) -> None:
    """The whole make run path once, broken down by step, the slowest marked."""
    import json
    import subprocess
    import sys

    out = work / "run"
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tests.e2e.main_job", "--output", str(out)], cwd=TOP,
                       capture_output=True, text=True)
    total = time.monotonic() - start
    if r.returncode != 0:
        rows.append(("make run path", "FAILED", r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""))
        return
    steps = json.loads((out / "summary.json").read_text())["steps"]
    slowest = max(steps, key=steps.get)
    rows.append(("make run path: total wall time", f"{total:.1f}s", "build tag RPMs cached"))
    for title, seconds in steps.items():
        rows.append((f"  {title[:60]}", f"{seconds:.1f}s",
                     f"{seconds / total:.0%}" + ("  <- slowest" if title == slowest else "")))


def staging_figure(rows: list[tuple[str, str, str]], count: int, latency: bool, measure: str) -> str:
    """A ratio of the staging rows (tests/bench/staging_bench.py prints them), found by its label."""
    label = None
    for name, value, _ in rows:
        if "RPMs" in name and not name.startswith(" "):
            label = name
        elif label and label.startswith(f"{count} RPMs") and ("ms/request" in label) == latency and measure in name:
            return value
    return "?"


def issue_table(figures: dict, rows: list[tuple[str, str, str]], parts: set[str]) -> list[tuple[str, str, str]]:
    """Every row of issue 13's table, the figure this run measured beside its goal."""
    def measured(part: str, text) -> str:
        if part not in parts:
            return f"not run (--only {part})"
        try:
            return text()
        except KeyError:
            return "not measured (failed?)"

    def boots() -> str:
        ratios = [v for fig in f.values() for k, v in fig.items() if k.startswith("boot ")]
        if not ratios:
            raise KeyError("boot")
        return f"{min(ratios):.2f}-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x"

    def staging(measure: str, latency: bool) -> str:
        return " / ".join(staging_figure(rows, count, latency, measure) for count in (50, 500))

    def size(variant: str) -> str:
        v = f[variant]
        floor = v.get("size-without-beyond-dracut")
        return (f"{v['size-as-built']:.3f}x / {v['size-equal-compression']:.2f}x"
                + ("" if floor is None else f" ({floor:.3f}x without what it promises beyond dracut)"))

    def build_time(variant: str) -> str:
        v = f[variant]
        return (f"{v['build-cold']:.2f}x / {v['build-warm']:.2f}x ({v['ours-cold-seconds']:.1f} s vs "
                f"{v['dracut-seconds'] + v['depmod-all-seconds']:.1f} s with depmod -a; "
                f"{v['ours-warm-seconds']:.1f} s vs {v['dracut-seconds']:.1f} s; warm, both on disk "
                f"{v['build-warm-disk']:.2f}x)")

    warm_measure, cold_measure = "ratio warm / (cp -al + createrepo_c)", "ratio cold / curl (one process)"
    f = figures.get("realcontent", {})
    return [
        ("real content, virt initrd size vs dracut, as shipped / equal compression",
         measured("realcontent", lambda: size("virt")), "<= 1.0x as shipped"),
        ("real content, generic initrd size vs dracut, as shipped / equal compression",
         measured("realcontent", lambda: size("generic")), "<= 1.0x"),
        ("real content, whole build run vs dracut (workspace on tmpfs for both, as the spec builds), virt, "
         "cold (both with their per-kernel step) / warm",
         measured("realcontent", lambda: build_time("virt")), "<= 1.0x"),
        ("real content, whole build run vs dracut (workspace on tmpfs for both), generic, cold (both with their "
         "per-kernel step) / warm",
         measured("realcontent", lambda: build_time("generic")), "<= 1.0x"),
        ("  mkosi alone vs dracut alone, virt / generic", measured(
            "realcontent", lambda: f"{f['virt']['mkosi-alone']:.2f}x / {f['generic']['mkosi-alone']:.2f}x"), ""),
        ("real content, boot to root, every case vs dracut", measured("realcontent", boots),
         "<= 1.1x each, median <= 1.0x"),
        ("first variant's module selection, real content: warm cache / cold / before", measured(
            "realcontent", lambda: f"{f['virt']['selection-warm']:.2f} / {f['virt']['selection-cold']:.1f} / "
                                   f"{f['virt']['selection-before']:.1f} s"), "<= 0.5 s warm"),
        ("one fixture variant: time outside mkosi, without the zstd step the builder took over from mkosi",
         measured("builder", lambda: f"{figures['outside-mkosi']:.0%} (zstd {figures['outside-mkosi-zstd']:.0%})"),
         "<= 10%"),
        ("4 variants --jobs 2 vs four single builds", measured(
            "builder", lambda: f"{figures['jobs-ratio']:.2f} (everything else: {figures['jobs-others']:.2f} CPUs)"),
         "<= 0.5"),
        ("warm staging vs cp -al + createrepo_c, 50 / 500 RPMs", measured("staging", lambda: staging(warm_measure, False)),
         "<= 1.2x"),
        ("cold staging over loopback vs one curl process, 50 / 500 RPMs",
         measured("staging", lambda: staging(cold_measure, False)), "<= 1.5x"),
        ("cold staging, 20 ms per request, vs one curl process, 50 / 500 RPMs",
         measured("staging", lambda: staging(cold_measure, True)), "<= 0.4x"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", choices=("builder", "staging", "run", "realcontent"), help="run one part only")
    args = parser.parse_args()
    setup_logging(quiet=True)
    from tests.support.fixtures import build_fixture_repo

    load_before, cpu_start = machine.load1(), machine.CpuUse.now()
    repo = build_fixture_repo(TOP / "build" / "fixture-cache")
    work = Path(tempfile.mkdtemp(prefix="mkosi-initrd-bench-"))
    rows: list[tuple[str, str, str]] = []
    figures: dict = {}
    parts = {"builder", "staging", "run", "realcontent"} if args.only is None else {args.only}
    try:
        if args.only in (None, "builder"):
            bench_builder(work, repo, rows, figures)
        if args.only in (None, "staging"):
            from tests.bench.staging_bench import bench_staging, dnf_import_row

            rows.append(dnf_import_row())
            for count in (50, 500):
                for latency in (0.0, 0.02):
                    bench_staging(count, TOP / "build" / "bench-cache", rows, latency)
        if args.only in (None, "run"):
            bench_main_job(work, rows)
        if args.only in (None, "realcontent"):
            # ours against dracut on real content (issue 6): its own side-by-side table, printed by it
            import subprocess
            import sys

            subprocess.run([sys.executable, "-m", "tests.bench.realcontent_bench", "--figures", str(work / "rc.json")],
                           cwd=TOP, check=False)
            if (work / "rc.json").exists():
                figures["realcontent"] = json.loads((work / "rc.json").read_text())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + machine.describe(load_before, machine.load1(), cpu_start))
    width = max(len(r[0]) for r in rows) if rows else 0
    print(f"\n{'measure':{width}}  {'value':>8}  note")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>8}  {note}")
    table = issue_table(figures, rows, parts)
    width = max(len(r[0]) for r in table)
    vwidth = max(len(r[1]) for r in table)
    print(f"\nissue 13\n{'measure':{width}}  {'this run':{vwidth}}  goal")
    for name, value, goal in table:
        print(f"{name:{width}}  {value:{vwidth}}  {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
