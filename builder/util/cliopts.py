"""Command-line building blocks: each option and subcommand is declared once, as data."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    type: Optional[Callable[[str], Any]] = None
    action: Optional[str] = None
    default: Any = None
    required: bool = False
    metavar: Optional[str] = None
    dest: Optional[str] = None
    nargs: Optional[str] = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs: dict[str, Any] = {"help": self.help}
        for key in ("type", "action", "metavar", "dest", "nargs"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.default is not None:
            kwargs["default"] = self.default
        if self.flags[0].startswith("-"):
            kwargs["required"] = self.required
        parser.add_argument(*self.flags, **kwargs)


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum`; `what` names it in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value
    return parse


positive_int = int_at_least(1, "an integer")
epoch = int_at_least(0, "a number of seconds since 1970")


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    handler: Callable[[argparse.Namespace], int]


def parse_byte_size(text: str) -> int:
    """'500M', '4G', '1048576' -> bytes (K, M, G are powers of 1024, as in variant files); ValueError otherwise."""
    from mkosi_initrd_builder.building.variants import size_in_bytes

    return size_in_bytes(text)


def byte_size(text: str) -> int:
    """An argparse type for sizes such as 500M."""
    try:
        return parse_byte_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
