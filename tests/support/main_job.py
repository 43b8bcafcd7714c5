"""`make run`: the main job end to end on fixture content, one line per step with its time, and a
summary table at the end. Everything it writes goes under one output directory."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkosi_initrd_builder.build import BuildRequest, build
from mkosi_initrd_builder.errors import BuilderError
from mkosi_initrd_builder.log import setup_logging
from mkosi_initrd_builder.variants import load_variants
from mkosi_initrd_builder.verify import verify_variant

TOP = Path(__file__).resolve().parent.parent.parent
FIXTURE_VARIANTS = TOP / "tests" / "fixtures" / "variants"


class StepFailed(Exception):
    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"step '{step}' failed: {cause}")


@dataclasses.dataclass
class Progress:
    """Prints '[n/N] title ... done (12.3s)' for each step, and keeps the times for the table."""

    total: int
    done: int = 0
    times: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {title} ...", flush=True)
        start = time.monotonic()
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            print(f"[{self.done}/{self.total}] {title}: FAILED after {time.monotonic() - start:.1f}s", flush=True)
            raise StepFailed(title, e) from e
        self.times[title] = time.monotonic() - start
        print(f"[{self.done}/{self.total}] {title}: done ({self.times[title]:.1f}s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument("--output", type=Path, default=TOP / "out" / "run")
    parser.add_argument("--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    setup_logging(quiet=not args.verbose)
    out: Path = args.output.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        rows, progress = run_main_job(out)
    except StepFailed as e:
        print(f"\nmake run: FAILED in step '{e.step}': {e.cause}", file=sys.stderr)
        print(f"everything written so far is under {out}", file=sys.stderr)
        return 130 if isinstance(e.cause, KeyboardInterrupt) else 1
    print_table(rows, progress)
    print(f"\nall outputs are under {out}")
    return 0 if all(r["boot"].startswith("ok") and r["reproducible"] == "yes" for r in rows) else 1


def run_main_job(out: Path) -> tuple[list[dict[str, Any]], Progress]:
    from tests.support.fixtures import build_fixture_repo

    variants = tuple(load_variants(FIXTURE_VARIANTS))
    progress = Progress(total=4)
    with progress.step("build the fixture RPMs and repository"):
        repo = build_fixture_repo(TOP / "build" / "fixture-cache")
    request = BuildRequest(repo=repo.path, kernel_version=repo.kernel_version, output=out / "images",
                           variants=variants, jobs=2)
    with progress.step(f"build {len(variants)} variants with mkosi ({', '.join(v.name for v in variants)})"):
        first = {r.variant: r for r in build(request)}
    with progress.step("build everything again (one job, fresh cache) and compare"):
        second = {r.variant: r for r in build(dataclasses.replace(request, output=out / "images-again", jobs=1))}
    rows = []
    with progress.step("verify each variant and boot it in QEMU (initrd, and UKI under OVMF)"):
        for name, result in first.items():
            same = all(result.manifest["outputs"][k]["sha256"] == second[name].manifest["outputs"][k]["sha256"]
                       for k in result.manifest["outputs"])
            checks = verify_variant(result.directory, boot_test=True, repo=repo.path)
            failed = [c for c in checks if not c.ok]
            boots = [c for c in checks if c.name.startswith("boots")]
            # "boots (kernel + initrd)" -> "initrd 5.8s"; "boots (UKI under OVMF)" -> "uki 8.4s"
            boot_desc = ", ".join(("uki" if "UKI" in c.name else "initrd") + " "
                                  + (c.detail.split(":")[0] if c.ok else "FAIL") for c in boots)
            outputs = result.manifest["outputs"]
            rows.append({
                "variant": name,
                "initrd": outputs["initrd.cpio.zst"]["size"],
                "uki": outputs.get("uki.efi", {}).get("size"),
                "reproducible": "yes" if same else "NO",
                "boot": ("ok " if not failed else "FAIL ") + boot_desc,
                "build_s": result.seconds,
                "failed": [f"{c.name}: {c.detail}" for c in failed],
            })
            for f in rows[-1]["failed"]:
                print(f"  {name}: FAIL {f}", file=sys.stderr)
    (out / "summary.json").write_text(json.dumps({"rows": rows, "steps": progress.times}, indent=2) + "\n")
    return rows, progress


def print_table(rows: list[dict[str, Any]], progress: Progress) -> None:
    print()
    head = f"{'variant':10} {'initrd':>12} {'uki':>12} {'build':>7} {'reproducible':>12}  boot"
    print(head)
    print("-" * len(head))
    for r in rows:
        uki = f"{r['uki']:,}" if r["uki"] else "-"
        print(f"{r['variant']:10} {r['initrd']:>12,} {uki:>12} {r['build_s']:>6.1f}s {r['reproducible']:>12}  {r['boot']}")
    print()
    for title, seconds in progress.times.items():
        print(f"  {seconds:7.1f}s  {title}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuilderError as e:
        print(f"make run: {e}", file=sys.stderr)
        sys.exit(1)
