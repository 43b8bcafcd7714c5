"""The version comparison bump relies on, checked against rpm's own labelCompare."""

from __future__ import annotations

import itertools

import pytest

from mkosi_initrd_builder.rpmmeta.evr import EVR, vercmp

rpm = pytest.importorskip("rpm", reason="needs python3-rpm (make setup)")

VERSIONS = [
    "1", "1.0", "1.0.0", "1.0.1", "1.0a", "1.0.a", "1.a", "1.0~rc1", "1.0~rc2", "1.0~~", "1.0^", "1.0^git1",
    "1.0^git2", "1.0^git1~pre", "1.0.1^1", "2", "10", "010", "1_0", "1+0", "a", "b", "1.0^1.1", "1.0^1^1",
    "200.fc41", "200.fc41^1", "200.fc41^2", "200.fc41.1", "201.fc41", "0.rc3.20250101git1.30.fc43",
    "2^1", "2^5", "2^10", "2.1^1", "2~rc1", "1~", "~", "^",
]


def test_vercmp_agrees_with_rpm_on_every_pair():
    wrong = [(a, b, vercmp(a, b), rpm.labelCompare(("0", "1", a), ("0", "1", b)))
             for a, b in itertools.product(VERSIONS, repeat=2)
             if vercmp(a, b) != rpm.labelCompare(("0", "1", a), ("0", "1", b))]
    assert not wrong, "(a, b, ours, rpm's): " + repr(wrong[:10])


def test_evr_parses_epoch_version_release_and_compares_epoch_first():
    e = EVR.parse("1:6.1.192-2")
    assert (e.epoch, e.version, e.release, str(e)) == (1, "6.1.192", "2", "1:6.1.192-2")
    assert str(EVR.parse("6.14.4-200.fc41")) == "6.14.4-200.fc41"
    assert EVR.parse("1:1.0-1").compare(EVR.parse("0:9.0-1")) == 1
    assert EVR.parse("6.1-2").compare(EVR.parse("6.1-2")) == 0
    for bad in ("6.1", "x:6.1-2", "-2", "6.1-"):
        with pytest.raises(ValueError):
            EVR.parse(bad)
