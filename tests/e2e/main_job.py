"""`make run`: the main job end to end on fixture content, the way the product is meant to flow:

  the build tag's RPMs (fixture content, the buildroot's tools, the builder's own RPMs) served
     as a koji-like tree on 127.0.0.1
  -> buildArch of the mkosi-initrd-initrd SRPM through the kojid plugin (fake kojid and mock: a
     buildroot installed with dnf from the tag, installdeps, staging into the buildroot, rpmbuild
     of the rendered spec as the unprivileged build user under nspawn, offline)
  -> the same build again, compared byte for byte
  -> the variant RPMs installed into a scratch root with the fixture kernel, kernel-install run
     through our plugin for layout=bls and layout=uki
  -> what landed in $BOOT booted in QEMU to the marker
  -> a table.

One line per step with its time; everything written goes under one output directory, named at
the end. The HTTP server and every QEMU process are stopped on exit, Ctrl-C included."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.util.log import Stopwatch, setup_logging
from mkosi_initrd_builder.checking.qemu import boot
from tests.support.bootmarker import fixture_probe

TOP = Path(__file__).resolve().parent.parent.parent
FIXTURE_VARIANTS = TOP / "tests" / "fixtures" / "variants"
PREFIX = "mkosi-initrd-initrd"
BOOT_TIMEOUT = 240


class StepFailed(Exception):
    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"step '{step}' failed: {cause}")


@dataclasses.dataclass
class Progress:
    """Prints '[n/N] title ...' and '[n/N] title: done (12.3s)' for each step and keeps the times."""

    total: int
    done: int = 0
    times: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {title} ...", flush=True)
        watch = Stopwatch()
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            print(f"[{self.done}/{self.total}] {title}: FAILED after {watch.stop():.1f}s", flush=True)
            raise StepFailed(title, e) from e
        self.times[title] = watch.stop()
        print(f"[{self.done}/{self.total}] {title}: done ({self.times[title]:.1f}s)", flush=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rpm_payload_files(rpm: Path) -> dict[str, bytes]:
    """Every regular file in an RPM's payload, read with the real rpm2cpio and our cpio reader."""
    from mkosi_initrd_builder.checking.cpio import iter_cpio

    raw = subprocess.run(["rpm2cpio", str(rpm)], check=True, stdout=subprocess.PIPE).stdout
    return {e.name: e.data for e in iter_cpio(raw) if e.is_file}


@dataclasses.dataclass
class KojiBuild:
    rpms: dict[str, Path]       # subpackage name -> RPM file (as uploaded to the hub)
    stage: dict[str, Any]       # the uploaded stage-manifest.json
    summary_line: str           # the plugin's one log line


def build_in_koji(work: Path, tree: Any, server: Any, srpm_relpath: str, config: str, *,
                  topdir: Optional[Path] = None) -> KojiBuild:
    """One buildArch task of the SRPM through the plugin (loaded by PluginTracker) and the fake kojid."""
    import logging

    from tests.support.kojirun import loaded_plugin, run_build_arch

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    plugin_logger = logging.getLogger("koji.plugin.mkosi_initrd")
    handler = Capture(logging.INFO)
    plugin_logger.addHandler(handler)
    old_level = plugin_logger.level
    plugin_logger.setLevel(logging.INFO)
    work.mkdir(parents=True)
    try:
        with loaded_plugin(config, work / "mkosi_initrd.conf"):
            run = run_build_arch(work, tree, server, srpm_relpath, topdir=topdir)
    finally:
        plugin_logger.removeHandler(handler)
        plugin_logger.setLevel(old_level)
    if run.error is not None:
        log = run.buildroot / "result" / "build.log"
        tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else ""
        raise RuntimeError(f"buildArch failed: {run.error}\n{tail}")
    out = work / "rpms"
    out.mkdir()
    rpms = {}
    for relpath in run.result["rpms"]:
        name = relpath.rsplit("/", 1)[-1]
        (out / name).write_bytes(run.upload(name))
        pkg = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}", str(out / name)],
                             check=True, capture_output=True, text=True).stdout
        rpms[pkg] = out / name
    stage = json.loads(run.upload("stage-manifest.json"))
    summary = next((m for m in lines if "staged" in m), "")
    return KojiBuild(rpms, stage, summary)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=TOP / "out" / "run")
    parser.add_argument("--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    setup_logging(quiet=not args.verbose)
    out: Path = args.output.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        rows, stage_rows, progress = run_main_job(out)
    except StepFailed as e:
        print(f"\nmake run: FAILED in step '{e.step}': {e.cause}", file=sys.stderr)
        print(f"everything written so far is under {out}", file=sys.stderr)
        return 130 if isinstance(e.cause, KeyboardInterrupt) else 1
    print_table(rows, stage_rows, progress)
    (out / "summary.json").write_text(json.dumps({"rows": rows, "staging": stage_rows, "steps": progress.times},
                                                 indent=2) + "\n")
    print(f"\nall outputs are under {out}")
    ok = all(r["boot"].startswith("ok") and r["reproducible"] == "yes" for r in rows)
    if not ok:
        print("make run: FAILED: a variant did not boot or did not rebuild identically", file=sys.stderr)
    return 0 if ok else 1


def run_main_job(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Progress]:
    from tests.support.fixtures import build_fixture_repo
    from tests.support.kernel_install import (
        UKI_COPY_PLUGIN, BootDir, configure, kernel_install, make_root,
    )
    from tests.support.kojicontent import koji_content
    from tests.support.kojirun import TASK_ID
    from tests.support.kojitree import TreeServer, build_koji_tree, build_srpm, place_task_srpm

    progress = Progress(total=6)
    with contextlib.ExitStack() as stack:
        with progress.step("build the build tag's RPMs (fixture content, buildroot tools, the builder) and "
                           "serve them as a koji-like tree on 127.0.0.1"):
            repo = build_fixture_repo(TOP / "build" / "fixture-cache")
            content = koji_content(repo)
            tree = build_koji_tree(out / "koji", content.rpms, build_group=content.build_group)
            server = TreeServer(tree.topdir)
            stack.callback(server.stop)
            print(f"      {len(content.rpms)} RPMs ({len(repo.rpms)} fixture, {len(content.builder)} builder), "
                  f"kernel {repo.kernel_version}, {server.url}", flush=True)

        with progress.step(f"render the {PREFIX} spec for the fixture variants and build its SRPM"):
            src = out / "src"
            subprocess.run([sys.executable, "-m", "mkosi_initrd_builder", "--quiet", "spec",
                            "--kernel-version", repo.kernel_version, "--repo", str(tree.repo_dir),
                            "--variants-dir", str(FIXTURE_VARIANTS), "--packager", "mkosi-initrd developers <mkosi-initrd@localhost>",
                            "--output", str(src / f"{PREFIX}.spec")],
                           check=True)
            srpm = build_srpm(src / f"{PREFIX}.spec", src, out / "srpm-build")
            srpm_relpath = place_task_srpm(tree, srpm, TASK_ID)
            print(f"      {srpm.name}", flush=True)

        config = f"[mkosi_initrd]\npackages = {PREFIX}\ncache_dir = {out / 'plugin-cache'}\n"
        with progress.step("buildArch through the kojid plugin: mock buildroot from the tag's RPMs, installdeps, "
                           "staging, rpmbuild under nspawn (offline)"):
            first = build_in_koji(out / "buildarch-1", tree, server, srpm_relpath, config)
            print(f"      {first.summary_line}", flush=True)
            print("      " + ", ".join(sorted(p.name for p in first.rpms.values())), flush=True)

        with progress.step("buildArch again (fresh buildroot, topdir mounted, warm cache) and compare"):
            second = build_in_koji(out / "buildarch-2", tree, server, srpm_relpath, config, topdir=tree.topdir)
            print(f"      {second.summary_line}", flush=True)
            reproducible: dict[str, str] = {}
            for name, rpm in first.rpms.items():
                a, b = rpm_payload_files(rpm), rpm_payload_files(second.rpms[name])
                for path, data in a.items():
                    if path.endswith((".cpio.zst", ".efi")):
                        variant = path.split("/")[-2]
                        same = sha256(data) == sha256(b.get(path, b""))
                        reproducible[f"{variant}/{path.rsplit('/', 1)[-1]}"] = "yes" if same else "NO"

        variants = sorted(n.removeprefix(f"{PREFIX}-") for n in first.rpms if n != f"{PREFIX}-common")
        base = [repo.rpms[n] for n in ("filesystem", "busybox", "busybox-applets", "kernel-core")]
        kver = repo.kernel_version
        installs: list[tuple[str, str, BootDir]] = []
        with progress.step("install each variant RPM with the kernel; kernel-install for layout=bls and layout=uki"):
            for variant in variants:
                for layout in ("bls", "uki"):
                    files = rpm_payload_files(first.rpms[f"{PREFIX}-{variant}"])
                    if layout == "uki" and not any(p.endswith("uki.efi") for p in files):
                        continue
                    root = make_root(out / "install" / f"{variant}-{layout}",
                                     [*base, first.rpms[f"{PREFIX}-common"], first.rpms[f"{PREFIX}-{variant}"]])
                    configure(root, layout=layout)
                    r = kernel_install(root, "add", kver, f"/usr/lib/modules/{kver}/vmlinuz",
                                       extra_plugins=[UKI_COPY_PLUGIN] if layout == "uki" else [])
                    if r.returncode != 0:
                        raise RuntimeError(f"kernel-install add ({variant}, {layout}) failed:\n{r.stdout}{r.stderr}")
                    b = BootDir(root, kver)
                    print(f"      {variant:8} {layout}: " + ", ".join(b.files()), flush=True)
                    installs.append((variant, layout, b))

        rows = []
        with progress.step("boot what landed in $BOOT in QEMU (bls: kernel + initrd; uki: under OVMF)"):
            for variant, layout, b in installs:
                probe = fixture_probe(variant, kver)
                if layout == "bls":
                    options = b.entry_fields()["options"][0]
                    result = boot(kernel=b.entry_dir / "linux", initrd=b.entry_dir / "initrd", append=options,
                                  probe=probe, timeout=BOOT_TIMEOUT)
                    image_key, size = f"{variant}/initrd.cpio.zst", (b.entry_dir / "initrd").stat().st_size
                else:
                    result = boot(kernel=b.uki, uefi=True, probe=probe, timeout=BOOT_TIMEOUT)
                    image_key, size = f"{variant}/uki.efi", b.uki.stat().st_size
                if not result.ok:
                    print(f"      {variant} {layout}: no marker; console tail:\n{result.console_tail}", flush=True)
                rows.append({
                    "variant": variant, "layout": layout, "image": image_key.split("/")[1], "size": size,
                    "reproducible": reproducible.get(image_key, "NO"),
                    "boot": f"ok {result.seconds:.1f}s" if result.ok else f"FAIL ({result.seconds:.0f}s)",
                })
    stage_rows = []
    for label, build in (("first build", first), ("second build", second)):
        totals = build.stage["totals"]
        stage_rows.append({"build": label, "packages": totals["packages"], "bytes": totals["bytes"],
                           "fetched": totals["bytes-fetched"], "from-cache": totals["bytes-from-cache"],
                           "seconds": build.stage.get("seconds", 0.0)})
    return rows, stage_rows, progress


def print_table(rows: list[dict[str, Any]], stage_rows: list[dict[str, Any]], progress: Progress) -> None:
    print()
    head = f"{'variant':9} {'layout':6} {'image':15} {'size':>12} {'reproducible':>12}  boot"
    print(head)
    print("-" * (len(head) + 8))
    for r in rows:
        print(f"{r['variant']:9} {r['layout']:6} {r['image']:15} {r['size']:>12,} {r['reproducible']:>12}  {r['boot']}")
    print()
    print(f"{'staging':13} {'packages':>8} {'bytes':>12} {'fetched':>12} {'from cache':>12} {'seconds':>8}")
    for s in stage_rows:
        print(f"{s['build']:13} {s['packages']:>8} {s['bytes']:>12,} {s['fetched']:>12,} {s['from-cache']:>12,} "
              f"{s['seconds']:>8.2f}")
    print()
    for title, seconds in progress.times.items():
        print(f"  {seconds:7.1f}s  {title}")
    print(f"  {sum(progress.times.values()):7.1f}s  total")


if __name__ == "__main__":
    sys.exit(main())
