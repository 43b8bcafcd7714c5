"""Where staged packages come from: one module per kind of source, each a class implementing
base.Source. Adding a kind is a new module plus its line in SOURCE_TYPES."""

from __future__ import annotations

from urllib.parse import urlsplit

from mkosi_initrd_builder.staging.sources.base import Source, SourceMetadata, Via
from mkosi_initrd_builder.staging.sources.directory import DirectorySource
from mkosi_initrd_builder.staging.sources.http import HttpSource
from mkosi_initrd_builder.util.errors import StagingError
from mkosi_initrd_builder.util.urls import redact

# Asked in this order; the directory source comes last, as it takes any text without a scheme.
SOURCE_TYPES: tuple[type[Source], ...] = (
    HttpSource,
    DirectorySource,
)

__all__ = ["SOURCE_TYPES", "Source", "SourceMetadata", "Via", "describe_schemes", "parse_source"]


def describe_schemes() -> str:
    """'a, b or c': what --source's help and the unknown-scheme error offer."""
    schemes = [s for t in SOURCE_TYPES for s in t.schemes]
    return ", ".join(schemes[:-1]) + f" or {schemes[-1]}" if len(schemes) > 1 else schemes[0]


def parse_source(text: str) -> Source:
    """The source `text` names: the first registered kind that recognises it."""
    shown = redact(text)
    if shown != text:
        # Credentials would be printed back in errors, logs and koji's task results; a repository
        # that needs them is reached another way (a mounted topdir, a proxy that adds them).
        raise StagingError(f"source {shown!r}: a user name or password in the URL is not supported")
    try:
        for kind in SOURCE_TYPES:
            source = kind.parse(text)
            if source is not None:
                return source
        scheme = urlsplit(text).scheme
    except ValueError as e:  # urlsplit's and .port's own complaints: "Invalid IPv6 URL", a port out of range
        raise StagingError(f"source {shown!r}: not a valid URL ({e})") from None
    raise StagingError(f"source {shown!r}: unsupported URL scheme {scheme!r} (use {describe_schemes()})")
