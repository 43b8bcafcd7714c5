"""The rules that keep a package or metadata location inside its repository, shared by the repodata
reader and every kind of staging source: nothing trusts an href until it has passed here."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from mkosi_initrd_builder.util.errors import UnsafeHrefError

TOPLINK = "toplink"


def package_relpath(href: str) -> PurePosixPath:
    """The path of a package relative to its repository; UnsafeHrefError for anything that could
    leave it: absolute paths, '..' components (also percent-encoded), URLs."""
    if not href:
        raise UnsafeHrefError(href, "is empty")
    if "\0" in href or "\\" in href:
        raise UnsafeHrefError(href, "contains a NUL character or a backslash")
    if "?" in href or "#" in href:
        raise UnsafeHrefError(href, "contains '?' or '#'")
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        raise UnsafeHrefError(href, "is a URL, not a path inside the repository")
    for form in (href, unquote(href)):
        if form.startswith("/"):
            raise UnsafeHrefError(href, "is an absolute path")
        if ".." in form.split("/"):
            raise UnsafeHrefError(href, "contains a '..' component")
    components = [c for c in href.split("/") if c not in ("", ".")]
    if not components:
        raise UnsafeHrefError(href, "names no file")
    rel = PurePosixPath(*components)
    check_toplink(href, rel)
    return rel


def check_toplink(href: str, rel: PurePosixPath) -> None:
    """koji hrefs go through toplink to the whole topdir; only its package trees may be reached."""
    if rel.parts[0] != TOPLINK:
        return
    inner = rel.parts[1:]
    if len(inner) >= 2 and inner[0] == "packages":
        return
    if len(inner) >= 4 and inner[0] == "vol" and inner[2] == "packages":
        return
    raise UnsafeHrefError(href, "goes through toplink but not into packages/ or vol/<volume>/packages/")


def metadata_relpath(href: str) -> PurePosixPath:
    """A metadata file named by repomd.xml: a file directly in repodata/, nowhere else."""
    rel = package_relpath(href)
    if rel.parts[0] != "repodata" or len(rel.parts) != 2:
        raise UnsafeHrefError(href, "metadata outside repodata/")
    return rel
