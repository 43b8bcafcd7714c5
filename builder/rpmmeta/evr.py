"""RPM version comparison (epoch, version, release), as rpm orders packages; used to keep the spec's
version monotonic. The unit tests check it against rpm's own labelCompare."""

from __future__ import annotations

import dataclasses
import re

# rpm compares alternating runs of digits and letters; everything else only separates them,
# except "~" (sorts before anything, even the end) and "^" (sorts after the end, before anything else).
_SEGMENT = re.compile(r"[0-9]+|[A-Za-z]+|[~^]")


def vercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as version string `a` is older than, equal to or newer than `b`."""
    if a == b:
        return 0
    sa, sb = _segments(a), _segments(b)
    for x, y in zip(sa, sb):
        if x != y:
            return _compare_tokens(x, y)
    # One list is a prefix of the other: what follows decides.
    if len(sa) == len(sb):
        return 0
    longer, sign = (sa, 1) if len(sa) > len(sb) else (sb, -1)
    nxt = longer[min(len(sa), len(sb))]
    if nxt == "~":
        return -sign  # "1.0~rc1" is older than "1.0"
    return sign       # "1.0^git1" and "1.0.1" are newer than "1.0"


def _segments(s: str) -> list[str]:
    return _SEGMENT.findall(s)


def _compare_tokens(x: str, y: str) -> int:
    for special, rank in (("~", -1), ("^", 1)):
        if x == special or y == special:
            if x == y:
                return 0
            # "~" loses against anything; "^" loses against any real segment (it only beats the end).
            if special == "~":
                return -1 if x == "~" else 1
            return -1 if x == "^" else 1
    if x.isdigit() != y.isdigit():
        return 1 if x.isdigit() else -1  # a number is newer than letters
    if x.isdigit():
        xi, yi = int(x), int(y)
        return (xi > yi) - (xi < yi)
    return (x > y) - (x < y)


@dataclasses.dataclass(frozen=True)
class EVR:
    epoch: int
    version: str
    release: str

    @classmethod
    def parse(cls, text: str) -> "EVR":
        """'[E:]V-R'; the release is what follows the last dash."""
        epoch, colon, rest = text.partition(":")
        if not colon:
            epoch, rest = "0", text
        version, dash, release = rest.rpartition("-")
        if not dash or not version or not release or not epoch.isdigit():
            raise ValueError(f"{text!r} is not an [epoch:]version-release")
        return cls(int(epoch), version, release)

    def __str__(self) -> str:
        return (f"{self.epoch}:" if self.epoch else "") + f"{self.version}-{self.release}"

    def compare(self, other: "EVR") -> int:
        if self.epoch != other.epoch:
            return 1 if self.epoch > other.epoch else -1
        return vercmp(self.version, other.version) or vercmp(self.release, other.release)
