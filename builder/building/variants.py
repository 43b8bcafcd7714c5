"""Variant definitions: one TOML file per variant, validated against a schema declared once as data."""

from __future__ import annotations

import dataclasses
import decimal
import enum
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mkosi_initrd_builder.building.formats import FORMATS, OutputFormat
from mkosi_initrd_builder.util.compress import ZSTD_LEVELS, ZSTD_PARAMETERS, ZSTD_STRATEGIES, ZstdSettings, ZstdTuning
from mkosi_initrd_builder.util.errors import VariantError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 (Fedora's python3-tomli)
    import tomli as tomllib


class Base(str, enum.Enum):
    """What the image starts from."""

    mkosi_initrd = "mkosi-initrd"  # mkosi's built-in initrd configuration (Include=mkosi-initrd)
    none = "none"                  # only the variant's package list


VARIANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.+]*$")
# rpm package names allow more, but a variant name ends up in a subpackage name and a file name.
# A package: an rpm name (rpmmeta.nevra.NAME_RE), or a provide, which adds "(x86-64)",
# "perl(Foo::Bar)" and file paths. Never whitespace, a comma, a comparison or a macro: mkosi splits
# Packages= on whitespace and commas, rpm reads "<>=" as a version constraint, and the spec expands
# "%" in BuildRequires.
PACKAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_/][A-Za-z0-9_.+()/:-]*$")
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)

# mkosi sections a [mkosi] pass-through table may name (mkosi 25 spelling).
MKOSI_SECTIONS = ("Distribution", "Output", "Content", "Validation", "Build", "Runtime")
# Settings the builder owns: overriding them would break offline builds, the output contract or
# reproducibility, so a variant may not pass them through.
MKOSI_RESERVED = frozenset({
    "Distribution", "Release", "Architecture", "Mirror", "LocalMirror", "Repositories",
    "RepositoryKeyCheck", "RepositoryKeyFetch", "ToolsTree", "ToolsTreeDistribution",
    "ToolsTreeMirror", "ToolsTreeRepositories", "CacheOnly", "SandboxTrees", "PackageManagerTrees",
    "PackageCacheDirectory", "CacheDirectory", "WorkspaceDirectory", "BuildDirectory",
    "OutputDirectory", "Output", "Format", "ImageId", "SourceDateEpoch", "WithNetwork",
    "Incremental", "History", "Include", "Profiles", "Packages", "ExtraTrees", "KernelCommandLine",
    "KernelModulesInclude", "KernelModulesExclude", "ManifestFormat", "Bootable", "MakeInitrd",
    "CompressOutput", "CompressLevel", "CleanPackageMetadata",
})
# Builder settings a variant may add to (mkosi appends list values); an empty value, a reset, is refused.
MKOSI_EXTENSIBLE = frozenset({"RemoveFiles"})


def _fail(path: Path, key: str, message: str) -> VariantError:
    return VariantError(path, message, key=key)


# Control characters (C0, DEL, C1) and the line and paragraph separators: str.splitlines(), with which
# mkosi's configuration parser reads its files, ends a line at \r, \x0b, \x0c, \x1c-\x1e, \x85, U+2028
# and U+2029 as well as at \n, and no consumer of a variant's strings takes any of them literally.
UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def check_characters(path: Path, key: str, value: str, consumer: str, *, allowed: str = "") -> str:
    """`value` unless it holds a character `consumer` (what reads it, for the message) cannot take."""
    bad = sorted({c for c in value if c not in allowed and unicodedata.category(c) in UNSAFE_CATEGORIES})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise _fail(path, key, f"contains the control or line-break character(s) {shown}, which {consumer} "
                               "does not take")
    return value


def parse_str(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(path, key, f"expected a string, got {type(value).__name__}")
    return value


def parse_nonempty_str(path: Path, key: str, value: Any) -> str:
    value = parse_str(path, key, value).strip()
    if not value:
        raise _fail(path, key, "must not be empty")
    return value


def parse_summary(path: Path, key: str, value: Any) -> str:
    value = parse_nonempty_str(path, key, value)
    if "\n" in value:
        raise _fail(path, key, "must be a single line (it becomes an RPM Summary)")
    return check_characters(path, key, value, "an RPM Summary: line")


def parse_description(path: Path, key: str, value: Any) -> str:
    value = parse_nonempty_str(path, key, value)
    return check_characters(path, key, value, "an RPM %description (lines and tabs only)", allowed="\n\t")


def parse_kernel_command_line(path: Path, key: str, value: Any) -> str:
    """One line for ukify's --cmdline, whitespace folded as ukify folds it (so the manifest says what
    the UKI holds); a leading '@' would make ukify embed the file it names."""
    value = check_characters(path, key, parse_str(path, key, value), "a kernel command line (one line)")
    value = " ".join(value.split())
    if value.startswith("@"):
        raise _fail(path, key, "must not start with '@': ukify reads '@PATH' as the name of a file whose "
                               "contents become the command line")
    return value


def parse_str_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, "expected a list of strings")
    return tuple(v.strip() for v in value)


def parse_packages(path: Path, key: str, value: Any) -> tuple[str, ...]:
    packages = parse_str_list(path, key, value)
    for p in packages:
        if not p or not PACKAGE_NAME_RE.match(p):
            raise _fail(path, key, f"{p!r} is not a valid package name or provide")
    if len(set(packages)) != len(packages):
        dup = sorted({p for p in packages if packages.count(p) > 1})
        raise _fail(path, key, f"listed twice: {', '.join(dup)}")
    return packages


def parse_profiles(path: Path, key: str, value: Any) -> tuple[str, ...]:
    profiles = parse_str_list(path, key, value)
    for p in profiles:
        if not p or "/" in p or p.startswith("."):
            raise _fail(path, key, f"{p!r} is not a valid mkosi profile name")
        check_characters(path, key, p, "mkosi's --profile=")
    return profiles


def parse_regex_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    patterns = parse_str_list(path, key, value)
    for p in patterns:
        if not p:
            raise _fail(path, key, "empty pattern")
        if p == "default":
            continue
        try:
            re.compile(p)
        except re.error as e:
            raise _fail(path, key, f"{p!r} is not a valid regular expression: {e}") from None
    return patterns


def parse_formats(path: Path, key: str, value: Any) -> tuple[OutputFormat, ...]:
    names = parse_str_list(path, key, value)
    formats = []
    for n in names:
        try:
            formats.append(OutputFormat(n))
        except ValueError:
            allowed = ", ".join(f.value for f in OutputFormat)
            raise _fail(path, key, f"unknown format {n!r} (allowed: {allowed})") from None
    if OutputFormat.initrd not in formats:
        raise _fail(path, key, "must include 'initrd' (every variant builds its initrd; a UKI embeds it)")
    return tuple(k for k in FORMATS if k in formats)


def parse_base(path: Path, key: str, value: Any) -> Base:
    name = parse_str(path, key, value)
    try:
        return Base(name)
    except ValueError:
        allowed = ", ".join(repr(b.value) for b in Base)
        raise _fail(path, key, f"unknown base {name!r} (allowed: {allowed})") from None


def size_in_bytes(text: str) -> int:
    """'60M', '1.5G', '4096' -> bytes (K, M, G are powers of 1024); ValueError naming the problem."""
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (use a number with an optional K, M or G suffix)")
    # Decimal, not float: 400 digits are no infinity, and "1.1G" is exact.
    size = int(decimal.Decimal(m.group(1)) * 1024 ** " KMG".index((m.group(2) or " ").upper()))
    if size <= 0:
        raise ValueError(f"{text!r} must be positive")
    return check_size_bound(text, size)


# The largest size a file can have (off_t); a limit above it is a typo, and tools given it overflow.
MAX_SIZE = (1 << 63) - 1


def check_size_bound(text: object, size: int) -> int:
    if size > MAX_SIZE:
        raise ValueError(f"{text!r} is larger than {MAX_SIZE:,} bytes, the largest size a file can have")
    return size


def parse_size(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _fail(path, key, "expected a size such as \"60M\"")
    if isinstance(value, int):
        if value <= 0:
            raise _fail(path, key, "must be positive")
        try:
            return check_size_bound(value, value)
        except ValueError as e:
            raise _fail(path, key, str(e)) from None
    try:
        return size_in_bytes(value)
    except ValueError as e:
        raise _fail(path, key, str(e)) from None


def parse_generation(path: Path, key: str, value: Any) -> int:
    """An SBAT generation: a positive integer that only ever grows."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, key, "expected a positive integer")
    if not 1 <= value <= 2**31 - 1:
        raise _fail(path, key, "must be between 1 and 2147483647")
    return value


def parse_mkosi(path: Path, key: str, value: Any) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """[mkosi.<Section>] tables: Setting = "value" or ["values", ...], passed to mkosi as written."""
    if not isinstance(value, dict):
        raise _fail(path, key, "expected a table of mkosi sections, e.g. [mkosi.Content]")
    settings = []
    for section, table in value.items():
        where = f"{key}.{section}"
        if section not in MKOSI_SECTIONS:
            raise _fail(path, where, f"unknown mkosi section (allowed: {', '.join(MKOSI_SECTIONS)})")
        if not isinstance(table, dict):
            raise _fail(path, where, "expected a table of mkosi settings")
        for setting, raw in table.items():
            skey = f"{where}.{setting}"
            if not re.match(r"^[A-Z][A-Za-z0-9]*$", setting):
                raise _fail(path, skey, "not an mkosi setting name (CamelCase, as in mkosi.conf)")
            if setting in MKOSI_RESERVED:
                raise _fail(path, skey, "is set by the builder (offline repository, outputs, "
                                        "reproducibility) or by a variant key; it cannot be passed through")
            values: list[Any] = raw if isinstance(raw, list) else [raw]
            out = []
            for v in values:
                if isinstance(v, bool):
                    out.append("yes" if v else "no")
                elif isinstance(v, (int, str)):
                    out.append(_mkosi_value(path, skey, str(v)))
                else:
                    raise _fail(path, skey, "expected a string, number, boolean or a list of them")
            settings.append((section, setting, tuple(out)))
    return tuple(settings)


def _mkosi_value(path: Path, key: str, value: str) -> str:
    """A value as mkosi's configuration parser must read it back: one line, whole, not a reset."""
    if "\n" in value:
        raise _fail(path, key, "values must be single lines")
    check_characters(path, key, value, "mkosi's configuration parser (it reads one setting per line)")
    if "#" in value:
        raise _fail(path, key, "values must not contain '#': mkosi's configuration parser starts a comment "
                               "there and drops the rest of the value")
    if not value.strip():
        raise _fail(path, key, "values must not be empty: an empty assignment resets the setting in mkosi, "
                               "including what the builder set")
    return value


# Where a variant's own files may go: configuration and data, never the kernel's or a package's
# tree (`usr/lib/modules`, which the builder owns, stays out).
FILE_ROOTS = ("etc", "usr")
FILE_ROOTS_REFUSED = (("usr", "lib", "modules"),)


def parse_files(path: Path, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    """[files] table: "/absolute/path" = "contents", text files the image carries beside its
    packages' (an mdadm.conf that names no array, for example). Sorted by path."""
    if not isinstance(value, dict):
        raise _fail(path, key, 'expected a table of "/path" = "contents"')
    files = []
    for name, contents in value.items():
        where = f"{key}.{name!r}"
        check_characters(path, where, name, "a file name in the image")
        parts = tuple(name.split("/"))
        if not name.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]) or len(parts) < 3:
            raise _fail(path, where, "must be an absolute, normalised path of a file below a directory "
                                     "(no '.', '..' or '//' components)")
        components = parts[1:]
        if components[0] not in FILE_ROOTS:
            raise _fail(path, where, f"must be below /{' or /'.join(FILE_ROOTS)}")
        if any(components[:len(r)] == r for r in FILE_ROOTS_REFUSED):
            raise _fail(path, where, "is below /usr/lib/modules, which the builder fills from the kernel package")
        if not isinstance(contents, str):
            raise _fail(path, where, "expected the file's contents as a string")
        check_characters(path, where, contents, "a text file (lines and tabs only)", allowed="\n\t")
        files.append((name, contents))
    return tuple(sorted(files))


# A UKI profile's ID: what systemd-boot shows and a boot entry names (the stub takes "@N" by index).
PROFILE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
PROFILE_KEYS = ("id", "title", "kernel-command-line")


@dataclasses.dataclass(frozen=True)
class UkiProfile:
    """An extra profile of the variant's UKI: the same kernel and initrd, its own command line."""

    id: str
    title: str
    kernel_command_line: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "kernel-command-line": self.kernel_command_line}


def _tables(path: Path, key: str, value: Any, keys: Sequence[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    """("<key>[n]", table) for each table of an array of tables whose keys are exactly `keys`; an
    error names the table and the key at fault."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _fail(path, key, f"expected [[{key}]] tables with {', '.join(keys[:-1])} and {keys[-1]}")
    for n, table in enumerate(value, start=1):
        where = f"{key}[{n}]"
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise _fail(path, f"{where}.{unknown[0]}", f"unknown key (known keys: {', '.join(keys)})")
        missing = [k for k in keys if k not in table]
        if missing:
            raise _fail(path, f"{where}.{missing[0]}", "required key is missing")
        yield where, table


def _table_name(path: Path, where: str, value: Any, purpose: str = "") -> str:
    name = parse_nonempty_str(path, where, value)
    if not PROFILE_ID_RE.match(name):
        raise _fail(path, where, f"{name!r} must match {PROFILE_ID_RE.pattern}{purpose}")
    return name


def _table_cmdline(path: Path, where: str, value: Any, why: str) -> str:
    cmdline = parse_kernel_command_line(path, f"{where}.kernel-command-line", value)
    if not cmdline:
        raise _fail(path, f"{where}.kernel-command-line", f"must not be empty: {why}")
    return cmdline


def _unique(path: Path, key: str, names: Sequence[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise _fail(path, key, f"{what} listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")


def parse_uki_profiles(path: Path, key: str, value: Any) -> tuple[UkiProfile, ...]:
    """[[uki-profiles]] tables, profiles 1, 2, ... after the base (profile 0: kernel-command-line)."""
    profiles = tuple(
        UkiProfile(_table_name(path, f"{where}.id", table["id"]),
                   parse_summary(path, f"{where}.title", table["title"]),
                   _table_cmdline(path, where, table["kernel-command-line"],
                                  "a profile without its own command line would boot like the base"))
        for where, table in _tables(path, key, value, PROFILE_KEYS))
    _unique(path, key, [p.id for p in profiles], "profile id")
    return profiles


ADDON_KEYS = ("name", "kernel-command-line")


@dataclasses.dataclass(frozen=True)
class UkiAddon:
    """A command-line addon shipped beside the UKI (<uki>.efi.extra.d/<name>.addon.efi): systemd-stub
    appends its .cmdline to the UKI's when it finds it there."""

    name: str
    kernel_command_line: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.addon.efi"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "kernel-command-line": self.kernel_command_line}


def parse_uki_addons(path: Path, key: str, value: Any) -> tuple[UkiAddon, ...]:
    """[[uki-addons]] tables: name and kernel-command-line."""
    addons = tuple(
        UkiAddon(_table_name(path, f"{where}.name", table["name"], " (it names the file)"),
                 _table_cmdline(path, where, table["kernel-command-line"], "the command line is all an addon carries"))
        for where, table in _tables(path, key, value, ADDON_KEYS))
    _unique(path, key, [a.name for a in addons], "addon name")
    return addons


REMOVAL_KEYS = ("reason", "paths")
# What a removal pattern may name: Path.glob()'s syntax (mkosi's RemoveFiles= globs the image root),
# components only: no '.', '..' or empty ones, and '**' only as a whole component.
REMOVAL_ROOTS = ("etc", "usr")


@dataclasses.dataclass(frozen=True)
class Removal:
    """Files taken out of the image on purpose, and why: the package ships them, the variant does not
    need them (mkosi's RemoveFiles=; the manifest records the reason, the builder checks that nothing
    matching is left)."""

    reason: str
    paths: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "paths": list(self.paths)}


def parse_removal_glob(path: Path, where: str, value: Any) -> str:
    pattern = check_characters(path, where, parse_nonempty_str(path, where, value), "mkosi's RemoveFiles=")
    parts = pattern.split("/")
    if not pattern.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]) or len(parts) < 3:
        raise _fail(path, where, f"{pattern!r} must be an absolute, normalised glob below a directory "
                                 "(no '.', '..' or '//' components)")
    components = parts[1:]
    if components[0] not in REMOVAL_ROOTS:
        raise _fail(path, where, f"{pattern!r} must be below /{' or /'.join(REMOVAL_ROOTS)}")
    if any("**" in p and p != "**" for p in components):
        raise _fail(path, where, f"{pattern!r}: '**' must be a whole path component")
    if any(components[:len(r)] == list(r) for r in FILE_ROOTS_REFUSED):
        # A glob that reaches it anyway (/usr/lib*/**) is caught after the build: every kept module
        # must be in the image.
        raise _fail(path, where, f"{pattern!r} is below /usr/lib/modules, which kernel-modules-include and "
                                 "-exclude choose")
    for bad in ("#", ","):
        if bad in pattern:
            raise _fail(path, where, f"{pattern!r} must not contain {bad!r} (mkosi's configuration parser "
                                     "splits or comments there)")
    if any(c.isspace() for c in pattern):
        raise _fail(path, where, f"{pattern!r} must not contain whitespace (mkosi splits values on it)")
    return pattern


def parse_removals(path: Path, key: str, value: Any) -> tuple[Removal, ...]:
    """[[remove-files]] tables: reason (one line) and paths (globs)."""
    removals = []
    for where, table in _tables(path, key, value, REMOVAL_KEYS):
        reason = parse_summary(path, f"{where}.reason", table["reason"])
        raw = table["paths"]
        if not isinstance(raw, list) or not raw:
            raise _fail(path, f"{where}.paths", "expected a non-empty list of globs")
        paths = tuple(parse_removal_glob(path, f"{where}.paths", v) for v in raw)
        _unique(path, f"{where}.paths", paths, "glob")
        removals.append(Removal(reason, paths))
    _unique(path, key, [g for r in (*BASE_REMOVALS, *removals) for g in r.paths],
            "glob (the builder's own removals included)")
    return tuple(removals)


def _removal(reason: str, *paths: str) -> Removal:
    return Removal(reason, paths)


# Taken out of every image built on mkosi-initrd's configuration: what its package list (e2fsprogs,
# xfsprogs, btrfs-progs, erofs-utils, dosfstools, lvm2, p11-kit, glibc's) installs that an initrd
# never runs. Measured on real content (tests/realcontent), these are 13 MB of the `virt` image's
# 67 MB of cpio; the real-content boot matrix boots every case without them, and the real-content
# tests check that every ELF file left in the image finds the libraries it links. Globs cover
# Fedora's paths (/usr/lib64, /usr/sbin merged into /usr/bin) and Debian's (/usr/lib/<triplet>).
# The system bus names of the services below that an initrd never starts.
_SYSTEM_BUSES = ("login1", "hostname1", "locale1", "timedate1")
BASE_REMOVALS: tuple[Removal, ...] = (
    _removal("making, converting, tuning and debugging file systems (labels, defragmenting, bad block scans, "
             "undo files, encryption policies) is not an initrd's job; the checkers systemd-fsck runs (fsck.*, "
             "e2fsck, xfs_repair) stay",
             "/usr/*bin/mkfs*", "/usr/*bin/mke2fs", "/usr/*bin/mkdosfs", "/usr/*bin/mkswap", "/usr/*bin/debugfs",
             "/usr/*bin/e2image", "/usr/*bin/dumpe2fs", "/usr/*bin/tune2fs", "/usr/*bin/e2label",
             "/usr/*bin/resize2fs", "/usr/*bin/xfs_db", "/usr/*bin/xfs_io", "/usr/*bin/xfs_copy",
             "/usr/*bin/xfs_quota", "/usr/*bin/xfs_logprint", "/usr/*bin/xfs_mdrestore", "/usr/*bin/xfs_metadump",
             "/usr/*bin/xfs_spaceman", "/usr/*bin/xfs_fsr", "/usr/*bin/xfs_growfs", "/usr/*bin/xfs_estimate",
             "/usr/*bin/xfs_scrub*", "/usr/*bin/dump.erofs", "/usr/*bin/btrfs-convert", "/usr/*bin/btrfs-image",
             "/usr/*bin/btrfstune", "/usr/*bin/btrfs-map-logical", "/usr/*bin/btrfs-find-root",
             "/usr/*bin/btrfs-select-super", "/usr/lib*/**/libreiserfscore.so*", "/usr/*bin/fatlabel",
             "/usr/*bin/e4defrag", "/usr/*bin/e4crypt", "/usr/*bin/e2undo", "/usr/*bin/filefrag", "/usr/*bin/e2freefrag",
             "/usr/*bin/mklost+found", "/usr/*bin/badblocks"),
    _removal("the btrfs tool: udev's own btrfs builtin assembles multi-device btrfs file systems and "
             "fsck.btrfs (which stays) does nothing at boot; repairing btrfs is for the booted system or "
             "rescue media, and dracut's image has no btrfs tool either",
             "/usr/*bin/btrfs"),
    _removal("glibc's tools for the installed system (ldconfig with the unit that ran it at every boot, since "
             "an initrd's /etc never holds .updated; localedef, zic, zdump, tzselect, iconv, iconvconfig, locale, "
             "getconf, pldd) and libraries nothing in the image links or dlopens (libmvec, libnsl, libthread_db, "
             "libc_malloc_debug)",
             "/usr/*bin/ldconfig", "/usr/lib/systemd/system/ldconfig.service",
             "/usr/lib/systemd/system/*.wants/ldconfig.service", "/usr/bin/localedef", "/usr/*bin/zic",
             "/usr/bin/zdump", "/usr/bin/tzselect", "/usr/bin/iconv", "/usr/*bin/iconvconfig", "/usr/bin/locale",
             "/usr/bin/getconf", "/usr/bin/pldd", "/usr/lib*/**/libmvec.so*", "/usr/lib*/**/libnsl.so*",
             "/usr/lib*/**/libthread_db*.so*", "/usr/lib*/**/libc_malloc_debug.so*"),
    _removal("p11-kit's command-line tools and servers; systemd dlopens only libp11-kit, for PKCS#11 tokens",
             "/usr/bin/trust", "/usr/bin/p11-kit", "/usr/libexec/p11-kit"),
    _removal("ncurses' libraries beyond libtinfo (ncurses, form, menu, panel, tic): nothing in the image links "
             "them (less and bash use libtinfo)",
             "/usr/lib*/**/libncurses*.so*", "/usr/lib*/**/libform*.so*", "/usr/lib*/**/libmenu*.so*", "/usr/lib*/**/libpanel*.so*",
             "/usr/lib*/**/libtic.so*"),
    _removal("LVM monitoring (dmeventd, its plugins, which need liblvm2cmd, and their units) and lvmpolld: "
             "the real root's lvm2-monitor.service starts monitoring, as after a dracut boot, whose image has none",
             "/usr/*bin/dmeventd", "/usr/*bin/lvmpolld", "/usr/lib*/**/liblvm2cmd.so*",
             "/usr/lib*/**/libdevmapper-event-lvm2*.so*", "/usr/lib/systemd/system/dm-event.*",
             "/usr/lib/systemd/system/lvm2-lvmpolld.*", "/usr/lib/systemd/system/lvm2-monitor.service"),
    _removal("clients of daemons an initrd does not start (logind, timedated, hostnamed, localed) and "
             "kernel-install with its plugins, which install kernels on the booted system",
             "/usr/bin/loginctl", "/usr/bin/timedatectl", "/usr/bin/hostnamectl", "/usr/bin/localectl",
             "/usr/bin/kernel-install", "/usr/lib/kernel"),
    _removal("systemd-analyze: the booted system analyses the boot, the initrd's part included",
             "/usr/bin/systemd-analyze"),
    _removal("TPM transports for simulators, swtpm's socket, commands and SPI/I2C adapters: systemd reaches the "
             "TPM through the kernel's /dev/tpmrm0 (tcti-device), in a virtual machine too",
             "/usr/lib*/**/libtss2-tcti-mssim.so*", "/usr/lib*/**/libtss2-tcti-swtpm.so*",
             "/usr/lib*/**/libtss2-tcti-cmd.so*", "/usr/lib*/**/libtss2-tcti-pcap.so*",
             "/usr/lib*/**/libtss2-tcti-libtpms.so*", "/usr/lib*/**/libtss2-tcti-spi*.so*",
             "/usr/lib*/**/libtss2-tcti-i2c*.so*"),
    _removal("command-line completion for interactive shells; the emergency shell works without it",
             "/usr/share/bash-completion", "/usr/share/zsh"),
    _removal("services of the running system an initrd never starts, with their units, D-Bus and polkit files: "
             "logind (with user sessions and XDG autostart), hostnamed, localed, timedated; pcrlock, which "
             "writes TPM policies on the booted system, with its PCR predictions; systemd-measure, which "
             "predicts PCRs when a UKI is built",
             "/usr/lib/systemd/systemd-logind", "/usr/lib/systemd/systemd-user-runtime-dir",
             "/usr/lib/systemd/systemd-xdg-autostart-condition",
             "/usr/lib/systemd/user-generators/systemd-xdg-autostart-generator",
             "/usr/lib/systemd/systemd-hostnamed", "/usr/lib/systemd/systemd-localed",
             "/usr/lib/systemd/systemd-timedated", "/usr/lib/systemd/systemd-pcrlock",
             "/usr/lib/systemd/systemd-measure", "/usr/lib/pcrlock.d", "/etc/systemd/logind.conf",
             "/usr/lib/systemd/system/systemd-logind.service*", "/usr/lib/systemd/system/user-runtime-dir@.service",
             "/usr/lib/systemd/system/systemd-hostnamed.*", "/usr/lib/systemd/system/systemd-localed.service*",
             "/usr/lib/systemd/system/systemd-timedated.service*", "/usr/lib/systemd/system/systemd-pcrlock*",
             "/usr/lib/systemd/system/*.wants/systemd-logind.service",
             "/usr/lib/systemd/system/*.wants/systemd-hostnamed.socket",
             "/usr/lib/systemd/system/*.wants/systemd-pcrlock*",
             *(f"/usr/lib/systemd/system/dbus-org.freedesktop.{name}.service" for name in _SYSTEM_BUSES),
             *(f"/usr/share/dbus-1/system-services/org.freedesktop.{name}.service" for name in _SYSTEM_BUSES),
             *(f"/usr/share/dbus-1/system.d/org.freedesktop.{name}.conf" for name in _SYSTEM_BUSES),
             *(f"/usr/share/polkit-1/actions/org.freedesktop.{name}.policy" for name in _SYSTEM_BUSES),
             "/usr/share/dbus-1/system.d/systemd-localed-read-only.conf"),
    _removal("libraries only tools removed above link: lzo (btrfs), liburcu's flavours but the one xfs_repair "
             "links, libss (debugfs), libhandle (xfs_fsr, xfs_io), and glibc's LD_PRELOAD profilers "
             "(libmemusage, libpcprofile) and libBrokenLocale",
             "/usr/lib*/**/liblzo2.so*", "/usr/lib*/**/liburcu-*.so*", "/usr/lib*/**/libss.so*",
             "/usr/lib*/**/libhandle.so*", "/usr/lib*/**/libmemusage.so", "/usr/lib*/**/libpcprofile.so",
             "/usr/lib*/**/libBrokenLocale.so*"),
    _removal("util-linux's tools for a running system: namespaces (nsenter, unshare), System V IPC (ipcs, ipcrm, ipcmk), "
             "scheduling (chrt, taskset), hardlink, more (less is the pager), and agetty: an initrd starts no "
             "getty (systemd's getty generator skips itself there), its emergency shell is systemd-sulogin-shell",
             "/usr/*bin/nsenter", "/usr/*bin/unshare", "/usr/*bin/ipcs", "/usr/*bin/ipcrm", "/usr/*bin/ipcmk",
             "/usr/*bin/chrt", "/usr/*bin/taskset", "/usr/*bin/hardlink", "/usr/*bin/more", "/usr/*bin/agetty"),
    _removal("fsck.erofs and libdeflate, which only it links: EROFS is read-only, systemd-fsck leaves a file "
             "system without its checker unchecked, and dracut's image has none either",
             "/usr/*bin/fsck.erofs", "/usr/lib*/**/libdeflate.so*"),
    _removal("systemd-cryptenroll: enrolling TPM2, FIDO2, PKCS#11 and recovery keys is done on the booted "
             "system; unlocking in the initrd is systemd-cryptsetup's",
             "/usr/bin/systemd-cryptenroll"),
    _removal("systemd-sleep and the services that run it (suspend, hibernate, hybrid sleep): an initrd never "
             "suspends; resuming from hibernation is systemd-hibernate-resume's, which stays",
             "/usr/lib/systemd/systemd-sleep", "/usr/lib/systemd/system/systemd-suspend.service",
             "/usr/lib/systemd/system/systemd-hibernate.service",
             "/usr/lib/systemd/system/systemd-hybrid-sleep.service",
             "/usr/lib/systemd/system/systemd-suspend-then-hibernate.service"),
    _removal("OpenSSL's engines (afalg, padlock, loader_attic): libcrypto loads one only when a configuration "
             "names it, and none in the image does",
             "/usr/lib*/**/engines-3"),
    _removal("systemd-pstore, with its unit, enablement and configuration: it moves the firmware's crash records "
             "into /var/lib/systemd/pstore and deletes them from the store, and in an initrd that directory is "
             "memory switch_root throws away; the booted system's systemd-pstore keeps them on disk",
             "/usr/lib/systemd/systemd-pstore", "/usr/lib/systemd/system/systemd-pstore.service",
             "/etc/systemd/system/*.wants/systemd-pstore.service",
             "/usr/lib/systemd/system/*.wants/systemd-pstore.service", "/etc/systemd/pstore.conf",
             "/usr/lib/tmpfiles.d/systemd-pstore.conf"),
    _removal("the services that keep the booted system's state across boots (backlight, rfkill, random seed) "
             "and check its quotas: their units never start in an initrd (ConditionPathExists=!/etc/initrd-release)",
             "/usr/lib/systemd/systemd-backlight", "/usr/lib/systemd/system/systemd-backlight@.service",
             "/usr/lib/systemd/systemd-rfkill", "/usr/lib/systemd/system/systemd-rfkill.*",
             "/usr/lib/systemd/systemd-random-seed", "/usr/lib/systemd/system/systemd-random-seed.service",
             "/usr/lib/systemd/system/*.wants/systemd-random-seed.service", "/usr/lib/systemd/systemd-quotacheck",
             "/usr/lib/systemd/system/systemd-quotacheck*", "/usr/lib/systemd/system/quotaon*"),
    _removal("what serves only what an initrd has none of: SysV init scripts and rc.local (their generators), "
             "telinit's /dev/initctl, binfmt_misc registrations (no binfmt.d), gettys (the getty generator skips "
             "itself there) and sshd (the SSH generator and proxy); systemd-firstboot, which sets up the booted "
             "system's /etc",
             "/usr/lib/systemd/system-generators/systemd-sysv-generator",
             "/usr/lib/systemd/system-generators/systemd-rc-local-generator", "/usr/lib/systemd/system/rc-local.service*",
             "/usr/lib/systemd/systemd-initctl", "/usr/lib/systemd/system/systemd-initctl.*",
             "/usr/lib/systemd/system/*.wants/systemd-initctl.socket", "/usr/lib/systemd/systemd-binfmt",
             "/usr/lib/systemd/system/systemd-binfmt.service", "/usr/lib/systemd/system/*.wants/systemd-binfmt.service",
             "/usr/lib/systemd/system-generators/systemd-getty-generator",
             "/usr/lib/systemd/system-generators/systemd-ssh-generator", "/usr/lib/systemd/systemd-ssh-proxy",
             "/usr/lib/systemd/ssh_config.d", "/etc/ssh/ssh_config.d/*-systemd-ssh-proxy.conf",
             "/usr/lib/tmpfiles.d/20-systemd-ssh-generator.conf", "/usr/bin/systemd-firstboot",
             "/usr/lib/systemd/system/systemd-firstboot.service",
             "/usr/lib/systemd/system/*.wants/systemd-firstboot.service"),
    _removal("systemd's tools for administering and scripting a running system (cgtop, delta, id128, path, "
             "socket-activate, stdio-bridge, inhibit, vpick, cat, mount, ac-power, varlinkctl, socket-proxyd): no "
             "unit, rule or script in the image runs them; the emergency shell keeps systemctl, journalctl, "
             "udevadm and busctl",
             *(f"/usr/bin/systemd-{tool}" for tool in ("cgtop", "delta", "id128", "path", "socket-activate",
                                                        "stdio-bridge", "inhibit", "vpick", "cat", "mount", "umount",
                                                        "ac-power")),
             "/usr/bin/varlinkctl", "/usr/lib/systemd/systemd-socket-proxyd"),
)


def parse_compress_level(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in ZSTD_LEVELS:
        raise _fail(path, key, f"expected a zstd level from {ZSTD_LEVELS.start} to {ZSTD_LEVELS.stop - 1}")
    return value


def parse_zstd_parameters(path: Path, key: str, value: Any) -> ZstdTuning:
    """[zstd-parameters]: strategy = "<name>" and integer parameters within zstd's bounds."""
    if not isinstance(value, dict):
        raise _fail(path, key, "expected a table such as [zstd-parameters] with strategy = \"btopt\"")
    bounds = {p.key: p for p in ZSTD_PARAMETERS}
    values: list[tuple[str, int | str]] = []
    for name, v in value.items():
        where = f"{key}.{name}"
        if name == "strategy":
            if v not in ZSTD_STRATEGIES:
                raise _fail(path, where, f"expected one of {', '.join(ZSTD_STRATEGIES)}")
        elif name in bounds:
            p = bounds[name]
            if isinstance(v, bool) or not isinstance(v, int) or not p.low <= v <= p.high:
                raise _fail(path, where, f"expected an integer from {p.low} to {p.high}")
        else:
            raise _fail(path, where, f"unknown zstd parameter (known: strategy, {', '.join(bounds)})")
        values.append((name, v))
    return ZstdTuning(tuple(values))


@dataclasses.dataclass(frozen=True)
class VariantField:
    """One key of a variant file: its TOML spelling, parser, default (None: required) and help."""

    key: str
    parse: Callable[[Path, str, Any], Any]
    default: Any
    help: str

    @property
    def attr(self) -> str:
        return self.key.replace("-", "_")

    @property
    def required(self) -> bool:
        return self.default is None


VARIANT_FIELDS: tuple[VariantField, ...] = (
    VariantField("summary", parse_summary, None, "One line; becomes the subpackage's Summary."),
    VariantField("description", parse_description, None, "Paragraph; becomes the subpackage's %description."),
    VariantField("base", parse_base, Base.mkosi_initrd,
                 "'mkosi-initrd' includes mkosi's built-in initrd configuration; 'none' uses only 'packages'."),
    VariantField("profiles", parse_profiles, (), "mkosi profiles to enable (Profiles=)."),
    VariantField("packages", parse_packages, (), "Packages (names or provides) installed into the image."),
    VariantField("kernel-modules-include", parse_regex_list, (),
                 "Regexes matched against module paths under /usr/lib/modules/<KVER>/ (e.g. '/ext4\\.ko'); "
                 "'default' stands for mkosi-initrd's list. Empty: every module the kernel package ships."),
    VariantField("kernel-modules-exclude", parse_regex_list, (),
                 "Regexes of modules to leave out even when included; dependencies of kept modules stay."),
    VariantField("firmware-packages", parse_packages, (),
                 "Packages the kept modules' firmware (modinfo firmware=) is taken from; only the files those "
                 "modules name go into the image. Empty: no firmware."),
    VariantField("kernel-command-line", parse_kernel_command_line, "",
                 "The UKI's .cmdline section: one line, not starting with '@'."),
    VariantField("formats", parse_formats, (OutputFormat.initrd,),
                 "Outputs to build: " + ", ".join(f"'{k.value}' ({f.file_name})" for k, f in FORMATS.items()) + "."),
    VariantField("uki-profiles", parse_uki_profiles, (),
                 "[[uki-profiles]] tables (id, title, kernel-command-line): extra profiles of the UKI, the same "
                 "kernel and initrd booted with another command line (systemd-stub's @N, systemd-boot's menu); "
                 "needs the 'uki' format."),
    VariantField("uki-addons", parse_uki_addons, (),
                 "[[uki-addons]] tables (name, kernel-command-line): command-line addons shipped beside the UKI "
                 "as uki.efi.extra.d/<name>.addon.efi; needs the 'uki' format."),
    VariantField("sbat-generation", parse_generation, 1,
                 "Generation of the UKI's SBAT entry mkosi-initrd-initrd-<variant>; raise it to revoke every "
                 "earlier build of the variant through SBAT."),
    VariantField("size-budget", parse_size, 0, "Largest allowed initrd.cpio.zst, e.g. \"60M\"; 0: no limit."),
    VariantField("remove-files", parse_removals, (),
                 "[[remove-files]] tables (reason, paths): files the variant's packages ship that the image "
                 "does not need, as absolute globs below /etc or /usr (Path.glob syntax, as mkosi's RemoveFiles=); "
                 "the manifest lists them with their reason and the builder checks none is left."),
    VariantField("compress-level", parse_compress_level, 9,
                 "zstd level of initrd.cpio.zst (1-19). 9 by measurement: level 3 makes a tenth larger images "
                 "and 15 saves 1% more for ten times the compression time (ARCHITECTURE.md)."),
    VariantField("zstd-parameters", parse_zstd_parameters, ZstdTuning(),
                 "[zstd-parameters] table over the level's defaults: strategy (" + ", ".join(ZSTD_STRATEGIES) +
                 ") and " + ", ".join(p.key for p in ZSTD_PARAMETERS) + " (integers within zstd's bounds; "
                 "window-log at most 23)."),
    VariantField("files", parse_files, (),
                 '[files] table of "/etc/..." or "/usr/..." = "contents": text files the image carries '
                 "beside its packages' (mode 0644, owned by root)."),
    VariantField("mkosi", parse_mkosi, (), "[mkosi.<Section>] tables passed through to mkosi verbatim."),
)
FIELDS_BY_KEY = {f.key: f for f in VARIANT_FIELDS}


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    name: str
    path: Path
    summary: str
    description: str
    base: Base
    profiles: tuple[str, ...]
    packages: tuple[str, ...]
    kernel_modules_include: tuple[str, ...]
    kernel_modules_exclude: tuple[str, ...]
    firmware_packages: tuple[str, ...]
    kernel_command_line: str
    formats: tuple[OutputFormat, ...]
    uki_profiles: tuple[UkiProfile, ...]
    uki_addons: tuple[UkiAddon, ...]
    sbat_generation: int
    size_budget: int
    remove_files: tuple[Removal, ...]
    compress_level: int
    zstd_parameters: ZstdTuning
    files: tuple[tuple[str, str], ...]
    mkosi: tuple[tuple[str, str, tuple[str, ...]], ...]

    @property
    def removals(self) -> tuple[Removal, ...]:
        """Everything taken out on purpose: the builder's own for an mkosi-initrd base, then the variant's."""
        return (*(BASE_REMOVALS if self.base is Base.mkosi_initrd else ()), *self.remove_files)

    @property
    def compression(self) -> ZstdSettings:
        return ZstdSettings(self.compress_level, self.zstd_parameters)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for manifests, input hashes and golden tests), keyed as in the variant
        file and derived from VARIANT_FIELDS; no file system paths."""
        return {"name": self.name, **{f.key: _jsonable(getattr(self, f.attr)) for f in VARIANT_FIELDS}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (UkiProfile, UkiAddon, Removal, ZstdTuning)):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def load_variant(path: Path) -> VariantSpec:
    name = path.name.removesuffix(".toml")
    if not VARIANT_NAME_RE.match(name):
        raise VariantError(path, f"variant name {name!r} (the file name) must match {VARIANT_NAME_RE.pattern}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VariantError(path, "no such variant file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VariantError(path, f"cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise VariantError(path, f"invalid TOML: {e}") from None
    unknown = sorted(set(data) - set(FIELDS_BY_KEY))
    if unknown:
        raise VariantError(path, f"unknown key (known keys: {', '.join(FIELDS_BY_KEY)})", key=unknown[0])
    values: dict[str, Any] = {"name": name, "path": path}
    for field in VARIANT_FIELDS:
        if field.key in data:
            values[field.attr] = field.parse(path, field.key, data[field.key])
        elif field.required:
            raise VariantError(path, "required key is missing", key=field.key)
        else:
            values[field.attr] = field.default
    spec = VariantSpec(**values)
    if spec.uki_profiles and OutputFormat.uki not in spec.formats:
        raise VariantError(path, "UKI profiles need the 'uki' format in formats", key="uki-profiles")
    if spec.uki_addons and OutputFormat.uki not in spec.formats:
        raise VariantError(path, "UKI addons need the 'uki' format in formats", key="uki-addons")
    if spec.base is Base.none and not spec.packages:
        raise VariantError(path, "base = \"none\" needs at least one package", key="packages")
    return spec


def load_variants(directory: Path, names: Sequence[str] = ()) -> list[VariantSpec]:
    """Load every variant in `directory`, or only `names` (in that order)."""
    if not directory.is_dir():
        raise VariantError(directory, "variants directory does not exist")
    available = sorted(p.name.removesuffix(".toml") for p in directory.glob("*.toml"))
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise VariantError(directory, f"unknown variant {missing[0]!r} "
                                          f"(available: {', '.join(available) or 'none'})")
        chosen: Iterable[str] = dict.fromkeys(names)
    else:
        if not available:
            raise VariantError(directory, "no variant files (*.toml) found")
        chosen = available
    return [load_variant(directory / f"{n}.toml") for n in chosen]
