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

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs: dict[str, Any] = {"help": self.help}
        for key in ("type", "action", "metavar", "dest"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.default is not None:
            kwargs["default"] = self.default
        if self.flags[0].startswith("-"):
            kwargs["required"] = self.required
        parser.add_argument(*self.flags, **kwargs)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def epoch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds since 1970") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    handler: Callable[[argparse.Namespace], int]


