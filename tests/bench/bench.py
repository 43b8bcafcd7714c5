"""`make bench`: speed figures measured side by side in one run, printed as ratios. Not a test:
nothing here asserts a timing; the goals are printed next to what was measured."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from mkosi_initrd_builder.building.build import BuildRequest, build
from mkosi_initrd_builder.util.log import setup_logging
from mkosi_initrd_builder.building.variants import load_variants

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


def bench_builder(work: Path, repo, rows: list[tuple[str, str, str]]) -> None:
    variants = {v.name: v for v in load_variants(four_variants(work / "variants"))}
    base = BuildRequest(repo=repo.path, kernel_version=repo.kernel_version, output=work / "x",
                        variants=(variants["minimal"],))

    # 1. one variant: total build time and the part mkosi itself takes
    results, total = timed(lambda: build(BuildRequest(**{**base.__dict__, "output": work / "one"})))
    mkosi = results[0].mkosi_seconds
    rows.append(("one variant (minimal): build wall time", f"{total:.1f}s", ""))
    rows.append(("  of which mkosi itself", f"{mkosi:.1f}s", f"{mkosi / total:.0%} of the build"))

    # 2. four variants with --jobs 2 against four separate single-variant builds
    four = tuple(variants[n] for n in sorted(variants))
    _, parallel = timed(lambda: build(BuildRequest(**{**base.__dict__, "output": work / "par", "variants": four,
                                                      "jobs": 2})))
    separate = 0.0
    for v in four:
        _, t = timed(lambda v=v: build(BuildRequest(**{**base.__dict__, "output": work / f"sep-{v.name}",
                                                       "variants": (v,)})))
        separate += t
    rows.append(("4 variants, --jobs 2, one build", f"{parallel:.1f}s", ""))
    rows.append(("4 separate single-variant builds", f"{separate:.1f}s", ""))
    rows.append(("  ratio parallel / separate", f"{parallel / separate:.2f}", "goal <= 0.50"))

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


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", choices=("builder", "staging", "run", "realcontent"), help="run one part only")
    args = parser.parse_args()
    setup_logging(quiet=True)
    from tests.support.fixtures import build_fixture_repo

    repo = build_fixture_repo(TOP / "build" / "fixture-cache")
    work = Path(tempfile.mkdtemp(prefix="mkosi-initrd-bench-"))
    rows: list[tuple[str, str, str]] = []
    try:
        if args.only in (None, "builder"):
            bench_builder(work, repo, rows)
        if args.only in (None, "staging"):
            from tests.bench.staging_bench import bench_staging

            for count in (50, 500):
                for latency in (0.0, 0.02):
                    bench_staging(count, TOP / "build" / "bench-cache", rows, latency)
        if args.only in (None, "run"):
            bench_main_job(work, rows)
        if args.only in (None, "realcontent"):
            # ours against dracut on real content (issue 6): its own side-by-side table, printed by it
            import subprocess
            import sys

            subprocess.run([sys.executable, "-m", "tests.bench.realcontent_bench"], cwd=TOP, check=False)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':{width}}  {'value':>8}  note")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>8}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
