"""The mapping table (mapping.toml) as frozen objects: which Debian packages make which Fedora-named RPM.

Every key is checked when the table is loaded; a mistake names the package and the key.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAPPING_FILE = Path(__file__).resolve().parent / "mapping.toml"
RPM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
DEP_KINDS = ("Requires", "Recommends", "Suggests")


class MappingError(ValueError):
    """mapping.toml is inconsistent; the message names the package and the key."""


@dataclasses.dataclass(frozen=True)
class Distribution:
    suite: str
    components: tuple[str, ...]
    uris: tuple[str, ...]
    signed_by: str
    debian_arch: str
    rpm_arch: str
    drop: tuple[str, ...]
    # Directories moved, with their files, to another one (Debian's /usr/sbin -> /usr/bin, for a
    # filesystem package whose /usr/sbin is a link to bin): source -> destination.
    relocate: tuple[tuple[str, str], ...] = ()
    # Directories an outside filesystem package owns (none of ours lists them as %dir); empty:
    # the table's own [package.filesystem] dirs.
    skeleton: tuple[str, ...] = ()
    # Paths that the outside filesystem package ships as symlinks: no RPM may ship them or
    # anything below them (rpm cannot replace a symlink by a directory).
    skeleton_links: tuple[str, ...] = ()
    # RPM names other packages of the same repository already use: the table must not make them.
    reserved: tuple[str, ...] = ()
    # True: Depends/Pre-Depends between repackaged Debian packages become Requires on the RPM
    # that carries the dependency (excluded packages are left out, as apt's closure is).
    debian_depends: bool = False


@dataclasses.dataclass(frozen=True)
class PackageMap:
    """One RPM of the test distribution."""

    name: str
    debian: tuple[str, ...] = ()
    absorb: tuple[str, ...] = ()
    split_from: Optional[str] = None
    files: tuple[str, ...] = ()
    except_: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    requires_exclude: tuple[str, ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()
    dirs: tuple[str, ...] = ()
    modes: tuple[tuple[str, str], ...] = ()
    content: tuple[tuple[str, str], ...] = ()
    kernel: bool = False
    synthetic: bool = False
    arch: Optional[str] = None
    summary: Optional[str] = None

    def takes(self, path: str) -> bool:
        """Whether a split-off package takes `path` (absolute) from its parent."""
        return any(glob_match(path, g) for g in self.files) and not any(glob_match(path, g) for g in self.except_)


@dataclasses.dataclass(frozen=True)
class MappingTable:
    distribution: Distribution
    dlopen: dict[str, str]                 # note priority -> dependency kind
    exclude: dict[str, str]                # Debian package -> why it is left out
    packages: tuple[PackageMap, ...]
    groups: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # comps group -> names
    source: Path = MAPPING_FILE

    def package(self, name: str) -> PackageMap:
        for p in self.packages:
            if p.name == name:
                return p
        raise KeyError(name)

    def debian_names(self) -> list[str]:
        """Every Debian package an entry names, in table order."""
        return [d for p in self.packages for d in p.debian]

    def splits_of(self, name: str) -> list[PackageMap]:
        return [p for p in self.packages if p.split_from == name]


@dataclasses.dataclass(frozen=True)
class _Key:
    attr: str
    kind: str  # str, strs, bool, pairs


_KEYS = {
    "debian": _Key("debian", "strs"),
    "absorb": _Key("absorb", "strs"),
    "from": _Key("split_from", "str"),
    "files": _Key("files", "strs"),
    "except": _Key("except_", "strs"),
    "drop": _Key("drop", "strs"),
    "provides": _Key("provides", "strs"),
    "requires": _Key("requires", "strs"),
    "requires-exclude": _Key("requires_exclude", "strs"),
    "symlinks": _Key("symlinks", "pairs"),
    "dirs": _Key("dirs", "strs"),
    "modes": _Key("modes", "pairs"),
    "content": _Key("content", "pairs"),
    "kernel": _Key("kernel", "bool"),
    "synthetic": _Key("synthetic", "bool"),
    "arch": _Key("arch", "str"),
    "summary": _Key("summary", "str"),
}


def glob_match(path: str, pattern: str) -> bool:
    """fnmatch where '*' stays inside one path component and '**' crosses them."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        else:
            regex += fnmatch.translate(pattern[i])[4:-3] if pattern[i] in "?[" else re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex, path) is not None


def _value(where: str, key: str, kind: str, raw: Any, fname: str = MAPPING_FILE.name) -> Any:
    def fail(msg: str) -> MappingError:
        return MappingError(f"{fname}: {where}: {key}: {msg}")

    if kind == "bool":
        if not isinstance(raw, bool):
            raise fail("expected true or false")
        return raw
    if kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise fail("expected a non-empty string")
        return raw
    if kind == "strs":
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise fail("expected a list of non-empty strings")
        return tuple(raw)
    if kind == "pairs":
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise fail("expected a table of path = string")
        for path in raw:
            if not path.startswith("/"):
                raise fail(f"{path!r} is not an absolute path")
        return tuple(sorted(raw.items()))
    raise AssertionError(kind)


def load_mapping(path: Path = MAPPING_FILE) -> MappingTable:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MappingError(f"{path}: {e}") from None
    unknown = set(data) - {"distribution", "dlopen", "exclude", "package", "groups"}
    if unknown:
        raise MappingError(f"{path.name}: unknown section(s): {', '.join(sorted(unknown))}")

    d = data.get("distribution", {})
    try:
        dist = Distribution(
            suite=d["suite"], components=tuple(d["components"]), uris=tuple(d["uris"]),
            signed_by=d["signed-by"], debian_arch=d["debian-arch"], rpm_arch=d["rpm-arch"],
            drop=tuple(d.get("drop", ())),
            relocate=_value("[distribution]", "relocate", "pairs", d.get("relocate", {}), path.name),
            skeleton=_value("[distribution]", "skeleton", "strs", d.get("skeleton", []), path.name),
            skeleton_links=_value("[distribution]", "skeleton-links", "strs", d.get("skeleton-links", []), path.name),
            reserved=_value("[distribution]", "reserved", "strs", d.get("reserved", []), path.name),
            debian_depends=_value("[distribution]", "debian-depends", "bool", d.get("debian-depends", False),
                                  path.name),
        )
    except KeyError as e:
        raise MappingError(f"{path.name}: [distribution]: missing key {e.args[0]}") from None
    known = {"suite", "components", "uris", "signed-by", "debian-arch", "rpm-arch", "drop", "relocate", "skeleton",
             "skeleton-links", "reserved", "debian-depends"}
    if set(d) - known:
        raise MappingError(f"{path.name}: [distribution]: unknown key(s) {', '.join(sorted(set(d) - known))}")
    for src, dest in dist.relocate:
        if not dest.startswith("/"):
            raise MappingError(f"{path.name}: [distribution]: relocate: {dest!r} is not an absolute path")

    dlopen = dict(data.get("dlopen", {}))
    for prio, kind in dlopen.items():
        if kind not in DEP_KINDS:
            raise MappingError(f"{path.name}: [dlopen]: {prio}: {kind!r} is not one of {', '.join(DEP_KINDS)}")

    exclude = dict(data.get("exclude", {}))
    for name, why in exclude.items():
        if not isinstance(why, str) or not why.strip():
            raise MappingError(f"{path.name}: [exclude]: {name}: expected the reason as a string "
                               "(quote names with dots: \"login.defs\" = ...)")
    packages: list[PackageMap] = []
    for name, table in data.get("package", {}).items():
        where = f"[package.{name}]"
        if not RPM_NAME_RE.match(name):
            raise MappingError(f"{path.name}: {where}: not a valid RPM name")
        kwargs: dict[str, Any] = {"name": name}
        for key, raw in table.items():
            if key not in _KEYS:
                raise MappingError(f"{path.name}: {where}: unknown key {key!r} (known: {', '.join(_KEYS)})")
            spec = _KEYS[key]
            kwargs[spec.attr] = _value(where, key, spec.kind, raw, path.name)
        p = PackageMap(**kwargs)
        kinds = [bool(p.debian), bool(p.split_from), p.synthetic]
        if sum(kinds) != 1:
            raise MappingError(f"{path.name}: {where}: needs exactly one of debian, from or synthetic")
        if p.split_from and not p.files:
            raise MappingError(f"{path.name}: {where}: files: a split package needs the globs of its files")
        packages.append(p)

    names = {p.name for p in packages}
    mapped_debian: dict[str, str] = {}
    for p in packages:
        if p.split_from and (p.split_from not in names or p.split_from == p.name):
            raise MappingError(f"{path.name}: [package.{p.name}]: from: no package {p.split_from!r} to split from")
        for deb in p.debian:
            if deb in mapped_debian:
                raise MappingError(f"{path.name}: [package.{p.name}]: debian: {deb} is already in "
                                   f"[package.{mapped_debian[deb]}]")
            if deb in exclude:
                raise MappingError(f"{path.name}: [package.{p.name}]: debian: {deb} is also in [exclude]")
            mapped_debian[deb] = p.name
        if p.name in dist.reserved:
            raise MappingError(f"{path.name}: [package.{p.name}]: the name is reserved (another package of the "
                               "repository has it; see [distribution] reserved)")
    groups: dict[str, tuple[str, ...]] = {}
    for group, members in data.get("groups", {}).items():
        groups[group] = _value("[groups]", group, "strs", members, path.name)
        unknown_members = sorted(set(groups[group]) - names - set(dist.reserved))
        if unknown_members:
            raise MappingError(f"{path.name}: [groups]: {group}: no package {', '.join(unknown_members)} in the "
                               "table or among the reserved names")
    return MappingTable(dist, dlopen, exclude, tuple(packages), groups, path)


def check_names(mapping: MappingTable, debian_names: Sequence[str]) -> None:
    """Debian packages that become RPMs under their own name must not clash with a Fedora name
    (of the table, or reserved by another package of the same repository)."""
    fedora = {p.name for p in mapping.packages} | set(mapping.distribution.reserved)
    clash = sorted(set(debian_names) & fedora - set(mapping.debian_names()))
    if clash:
        raise MappingError(f"Debian package(s) {', '.join(clash)} would become RPMs named like a "
                           "different entry of the table; map them explicitly")
