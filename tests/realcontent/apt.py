"""Debian packages through apt's own client with a private configuration, never the host's.

Every apt-get call gets -o options pointing its sources, lists, cache and dpkg status at a
directory of our own; the status file is empty, so `apt-get -s install` prints the whole
dependency closure as if on an empty system. The host's /etc/apt/sources.list(.d), its lists,
its archive cache and its dpkg database are neither read nor written (/etc/apt/apt.conf.d still
applies, so a proxy configured there is honoured).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .mapping import Distribution

log = logging.getLogger("tests.realcontent.apt")
OUTPUT_TAIL_LINES = 30


class AptError(RuntimeError):
    """An apt-get/apt-cache call failed; the message has the command and its output tail."""


@dataclasses.dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    depends: tuple[tuple[str, ...], ...] = ()  # Pre-Depends + Depends: groups of alternatives

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


class PrivateApt:
    """apt-get and apt-cache on a private state directory for one Debian suite."""

    def __init__(self, root: Path, dist: Distribution):
        # One state per suite and set of components below `root`: tables asking for other components
        # of one suite (the buildroot's main, mapping.toml's non-free-firmware too) never share a
        # sources file, so two of them at once never run apt with each other's.
        self.root = root / f"{dist.suite}-{'+'.join(dist.components)}"
        self.dist = dist
        self.sources = self.root / "sources.list.d"
        self.lists = self.root / "lists"
        self.cache = self.root / "cache"
        self.status = self.root / "status"
        for d in (self.sources, self.lists / "partial", self.cache / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        self.status.touch()
        source = (
            "Types: deb\n"
            f"URIs: {' '.join(dist.uris)}\n"
            f"Suites: {dist.suite}\n"
            f"Components: {' '.join(dist.components)}\n"
            f"Signed-By: {dist.signed_by}\n"
            f"Architectures: {dist.debian_arch}\n"
        )
        target = self.sources / f"{dist.suite}.sources"
        if not target.exists() or target.read_text() != source:
            target.write_text(source)

    def options(self) -> list[str]:
        opts = {
            "Dir::Etc::SourceList": "/dev/null",
            "Dir::Etc::SourceParts": str(self.sources),
            "Dir::State::Lists": str(self.lists),
            "Dir::Cache": str(self.cache),
            "Dir::State::status": str(self.status),
            "APT::Architecture": self.dist.debian_arch,
            "APT::Architectures": self.dist.debian_arch,
            # Our directories are root's; apt's _apt sandbox user could not write into them.
            "APT::Sandbox::User": "root",
            "APT::Get::List-Cleanup": "0",
        }
        return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]

    def _run(self, tool: str, args: Sequence[str], *, cwd: Path | None = None) -> str:
        argv = [tool, "-q", *self.options(), *args]
        log.info("+ %s %s", tool, " ".join(args) if len(args) < 12 else " ".join(args[:12]) + " ...")
        proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", env={"LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-OUTPUT_TAIL_LINES:])
            raise AptError(f"{tool} {' '.join(args[:6])} ... failed (exit status {proc.returncode}):\n{tail}")
        return proc.stdout

    def has_lists(self) -> bool:
        return any(self.lists.glob("*_Packages*"))

    def update(self) -> None:
        self._run("apt-get", ["update"])

    def ensure_lists(self) -> None:
        """Fetch the package lists once; later runs reuse them (refresh() when the mirror moved on)."""
        if not self.has_lists():
            self.update()

    def closure(self, names: Iterable[str]) -> dict[str, str]:
        """name -> version of everything `apt-get install --no-install-recommends names` would
        install on an empty system."""
        out = self._run("apt-get", ["-s", "install", "--no-install-recommends", *sorted(set(names))])
        versions: dict[str, str] = {}
        for line in out.splitlines():
            m = re.match(r"^Inst (\S+) \((\S+) ", line)
            if m:
                versions[m.group(1).split(":")[0]] = m.group(2)
        if not versions:
            raise AptError(f"apt-get -s install printed no Inst lines:\n{out[-2000:]}")
        return versions

    def show(self, versions: dict[str, str]) -> dict[str, DebianPackage]:
        """The Depends/Pre-Depends of exact package versions (apt-cache show)."""
        out = self._run("apt-cache", ["show", *(f"{n}={v}" for n, v in sorted(versions.items()))])
        packages: dict[str, DebianPackage] = {}
        for stanza in out.split("\n\n"):
            fields = parse_control(stanza)
            if "Package" not in fields:
                continue
            name, version = fields["Package"], fields.get("Version", "")
            if versions.get(name) != version or name in packages:
                continue
            groups = []
            for key in ("Pre-Depends", "Depends"):
                for group in fields.get(key, "").split(","):
                    alts = tuple(re.split(r"[\s(:]", a.strip(), maxsplit=1)[0] for a in group.split("|") if a.strip())
                    if alts:
                        groups.append(alts)
            packages[name] = DebianPackage(name, version, tuple(groups))
        missing = sorted(set(versions) - set(packages))
        if missing:
            raise AptError(f"apt-cache show gave no record for {', '.join(missing)}")
        return packages

    def download(self, packages: Sequence[DebianPackage], dest: Path) -> dict[str, Path]:
        """The .deb of each package in `dest`, downloading only those not there yet (apt checks
        each file against the signed index while downloading)."""
        dest.mkdir(parents=True, exist_ok=True)
        wanted = {p.name: p for p in packages}
        found = {p.name: f for p in packages if (f := dest / deb_file_name(p, self.dist.debian_arch)).exists()}
        # Architecture-independent packages are named _all.deb.
        for p in packages:
            if p.name not in found and (f := dest / deb_file_name(p, "all")).exists():
                found[p.name] = f
        todo = [p for p in packages if p.name not in found]
        if todo:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp:
                self._run("apt-get", ["download", *(p.pin for p in todo)], cwd=Path(tmp))
                for f in sorted(Path(tmp).glob("*.deb")):
                    name = f.name.split("_", 1)[0]
                    if name in wanted:
                        target = dest / f.name
                        shutil.move(str(f), target)  # same file system: a rename, never a half file
                        found[name] = target
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise AptError(f"apt-get download did not deliver {', '.join(missing)}")
        return found


def deb_file_name(p: DebianPackage, arch: str) -> str:
    """apt's file name for a package version: the epoch's colon is written %3a."""
    return f"{p.name}_{p.version.replace(':', '%3a')}_{arch}.deb"


def parse_control(text: str) -> dict[str, str]:
    """A deb822 stanza as a dict (continuation lines joined)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def deb_fields(deb: Path, *names: str) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), *names], stdout=subprocess.PIPE, text=True, check=True).stdout
    return parse_control(out)


def extract_deb(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise AptError(f"dpkg-deb -x {deb.name} failed: {proc.stdout[-2000:]}")


def needed_packages(
    roots: Iterable[str], available: dict[str, DebianPackage], exclude: Iterable[str]
) -> list[str]:
    """The packages reachable from `roots` through Depends/Pre-Depends within `available` (apt's
    closure), not entering excluded ones; for alternatives, the first one apt chose."""
    excluded = set(exclude)
    seen: set[str] = set()
    todo = [r for r in roots if r in available]
    while todo:
        name = todo.pop()
        if name in seen or name in excluded:
            continue
        seen.add(name)
        for group in available[name].depends:
            chosen = next((a for a in group if a in available), None)
            if chosen and chosen not in excluded:
                todo.append(chosen)
    return sorted(seen)
