"""Settings of the kojid plugin (/etc/kojid/plugins/mkosi_initrd.conf), declared once as data and
validated strictly: an unknown section or key, or a bad value, is an error naming it. The plugin turns
that error into koji.GenericError at load time, so a broken file stops kojid instead of a build."""

from __future__ import annotations

import configparser
import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.staging.download import RetryPolicy
from mkosi_initrd_builder.util.cliopts import parse_byte_size
from mkosi_initrd_builder.util.errors import PluginConfigError

SECTION = "mkosi_initrd"
# rpm package names and koji tag names: letters, digits and ._+- (koji's default tag name rule).
NAME_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
EXTRA_RE = re.compile(r"^[A-Za-z0-9._-]+$")
REQUIRED = object()


def _names(text: str) -> frozenset[str]:
    names = [n for n in re.split(r"[\s,]+", text.strip()) if n]
    bad = [n for n in names if not NAME_RE.match(n)]
    if bad:
        raise ValueError(f"not a valid name: {', '.join(repr(b) for b in bad)}")
    return frozenset(names)


def _package_names(text: str) -> frozenset[str]:
    names = _names(text)
    if not names:
        raise ValueError("name at least one source package (space or comma separated)")
    return names


def _extra_key(text: str) -> str:
    text = text.strip()
    if text and not EXTRA_RE.match(text):
        raise ValueError(f"{text!r} is not a tag extra name")
    return text


# Trees the operating system's packages or the kernel own: nothing of the builder's belongs below them.
SYSTEM_TREES = frozenset({"usr", "etc", "boot", "proc", "sys", "dev"})


def _cache_dir(text: str) -> Path:
    """An absolute directory of the cache's own: at least two levels below / (every top-level directory
    is shared: /, /var, /tmp, /srv...), outside the system's trees, written without '.' or '..'.
    PackageCache refuses, when staging, a directory that is neither empty nor marked as a cache."""
    raw = text.strip()
    if not raw.startswith("/"):
        raise ValueError(f"{raw!r} is not an absolute path")
    parts = [p for p in raw.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{raw!r} has a '.' or '..' component")
    path = Path("/", *parts)
    example = "such as /var/cache/kojid/mkosi-initrd"
    if len(parts) < 2:
        raise ValueError(f"{raw!r} is the top-level directory {path}, which holds more than this cache: "
                         f"name a directory of its own, {example}")
    if parts[0] in SYSTEM_TREES:
        raise ValueError(f"{raw!r} is below /{parts[0]}, which belongs to the operating system: {example}")
    return path


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is not between {low} and {high}")
        return value
    return parse


class Isolation(str, enum.Enum):
    """How the plugin treats mock's isolation for allow-listed builds.

    mkosi builds images in user namespaces; the kernel refuses them inside a chroot, which is
    what mock's simple isolation is, so the images can only be built under mock's nspawn
    isolation (kojid passes --new-chroot when the build tag's extra mock.new_chroot is true,
    --old-chroot when it is false, and nothing otherwise, leaving mock to choose)."""

    NSPAWN = "nspawn"  # allow-listed builds always get --new-chroot, whatever the tag says
    TAG = "tag"        # the tag decides; a tag asking for the simple chroot fails the build up front


def _isolation(text: str) -> Isolation:
    try:
        return Isolation(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not one of {', '.join(i.value for i in Isolation)}") from None


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    # The StageRequest setting the key becomes, so that an error the library raises about that
    # setting (SettingError) names this key to the release engineer.
    request_setting: Optional[str] = None


KEYS = (
    ConfigKey("packages", _package_names, REQUIRED,
              "source package names whose buildArch tasks get a staged repository (space or comma separated)"),
    ConfigKey("tags", _names, frozenset(),
              "only for these build tags (empty: any build tag)"),
    ConfigKey("tag_extra", _extra_key, "",
              "only when the build tag has this extra set to a true value, e.g. mkosi_initrd.enabled "
              "(empty: no check)"),
    ConfigKey("cache_dir", _cache_dir, Path("/var/cache/kojid/mkosi-initrd"),
              "content-addressed cache of verified RPMs shared by all builds on this builder", "cache_dir"),
    ConfigKey("max_size", parse_byte_size, 8 * 1024 ** 3,
              "refuse to stage more than this (K, M, G suffixes): the buildroot's disk is not endless", "max_bytes"),
    ConfigKey("jobs", _int_between(1, 64), 4, "parallel downloads", "jobs"),
    ConfigKey("retries", _int_between(1, 10), 4, "tries per file before a download fails the build"),
    ConfigKey("fetch_timeout", _int_between(1, 7 * 24 * 3600), int(RetryPolicy().file_timeout),
              "seconds one RPM may take to download, its retries included, before it fails the build (a "
              "server that trickles is stopped too); a build waiting for another build's download of the "
              "same RPM waits that long and one read timeout more"),
    ConfigKey("isolation", _isolation, Isolation.NSPAWN,
              "nspawn: run allow-listed builds under mock's nspawn isolation (--new-chroot) whatever the "
              "build tag says; tag: keep the tag's mock.new_chroot and fail up front when it asks for the "
              "simple chroot, where mkosi cannot create its user namespaces"),
)


@dataclasses.dataclass(frozen=True)
class PluginConfig:
    """One field per row of KEYS (the defaults live there)."""

    packages: frozenset[str]
    tags: frozenset[str]
    tag_extra: str
    cache_dir: Path
    max_size: int
    jobs: int
    retries: int
    fetch_timeout: int
    isolation: Isolation

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retries, file_timeout=float(self.fetch_timeout))

    @staticmethod
    def setting_spellings() -> dict[str, str]:
        """StageRequest setting -> how the configuration names it."""
        return {k.request_setting: f"[{SECTION}] {k.name}" for k in KEYS if k.request_setting}

    def skip_reason(self, package: str, tag: str, extra: Mapping[str, Any]) -> Optional[str]:
        """Why a build of `package` in `tag` gets no staged repository; None when it does."""
        if package not in self.packages:
            return f"{package} is not in packages"
        if self.tags and tag not in self.tags:
            return f"build tag {tag} is not in tags"
        if self.tag_extra and not is_true(extra.get(self.tag_extra)):
            return f"build tag {tag} does not set the extra {self.tag_extra} to true"
        return None


def is_true(value: Any) -> bool:
    """A koji tag extra as a boolean: extras set from the command line arrive as strings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def parse_plugin_config(parser: configparser.ConfigParser, path: Path) -> PluginConfig:
    """Validate what was read from `path`; PluginConfigError names the section or key at fault."""
    known = {k.name: k for k in KEYS}
    for section in parser.sections():
        if section != SECTION:
            raise PluginConfigError(path, f"[{section}]", f"unknown section (the plugin reads only [{SECTION}])")
    if not parser.has_section(SECTION):
        raise PluginConfigError(path, f"[{SECTION}]", "section missing")
    values: dict[str, Any] = {}
    for key, text in parser.items(SECTION, raw=True):
        if key not in known:
            raise PluginConfigError(path, f"[{SECTION}] {key}",
                                    f"unknown key (known: {', '.join(sorted(known))})")
        try:
            values[key] = known[key].parse(text)
        except ValueError as e:
            raise PluginConfigError(path, f"[{SECTION}] {key}", str(e)) from None
    for k in KEYS:
        if k.name not in values:
            if k.default is REQUIRED:
                raise PluginConfigError(path, f"[{SECTION}] {k.name}", f"missing: {k.help}")
            values[k.name] = k.default
    return PluginConfig(**values)
