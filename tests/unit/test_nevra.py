"""The one package identity type: its string forms, its constructors, and the order rpm gives
packages (the comparison itself is rpm's labelCompare; these pin down that it is used the right way
round, epoch first, and with the version rules bump relies on)."""

from __future__ import annotations

import pytest

from mkosi_initrd_builder.rpmmeta.nevra import NAME_RE, NEVRA


def k(evr: str, name: str = "kernel-core", arch: str = "x86_64") -> NEVRA:
    return NEVRA.with_evr(name, evr, arch)


@pytest.mark.parametrize("older, newer", [
    ("1.0~rc1-1", "1.0-1"),          # tilde sorts before the end: a pre-release is older
    ("1.0~rc1-1", "1.0~rc2-1"),
    ("1.0~~-1", "1.0~-1"),
    ("1.0-1", "1.0^git1-1"),         # caret sorts after the end: a snapshot after 1.0 is newer
    ("1.0^git1-1", "1.0.1-1"),       # ... but older than any further version segment
    ("1.0^git1~pre-1", "1.0^git1-1"),
    ("6.1-200.fc41", "6.1-200.fc41^1"),  # the images' own Release: kernel release ^ counter
    ("6.1-200.fc41^2", "6.1-200.fc41^10"),
    ("6.1-200.fc41^9", "6.1-201.fc41"),
    ("9.0-1", "1:1.0-1"),            # the epoch decides first
    ("1.a-1", "1.0-1"),              # a number is newer than letters
    ("2-1", "10-1"),                 # numbers compare as numbers
])
def test_order_follows_rpm(older, newer):
    a, b = k(older), k(newer)
    assert a < b and b > a and not b < a
    assert a.compare_evr(b) == -1 and b.compare_evr(a) == 1
    assert sorted([b, a]) == [a, b]


def test_versions_rpm_calls_equal_are_neither_older_nor_newer():
    a, b = k("1.0-1"), k("1.00-1")
    assert a.compare_evr(b) == 0 and not a < b and not b < a
    assert a != b  # equality stays exact: these are different packages in a repository


def test_name_then_evr_then_arch():
    packages = [k("2-1", "b"), k("1-1", "b", "x86_64"), k("1-1", "b", "noarch"), k("9-1", "a")]
    assert [str(p) for p in sorted(packages)] == ["a-9-1.x86_64", "b-1-1.noarch", "b-1-1.x86_64", "b-2-1.x86_64"]


def test_string_forms():
    p = NEVRA("kernel-core", 2, "7.0.42", "2.fc41", "x86_64")
    assert str(p) == "kernel-core-2:7.0.42-2.fc41.x86_64"
    assert p.evr() == "2:7.0.42-2.fc41"
    assert p.nvr() == "kernel-core-7.0.42-2.fc41"
    assert p.nvra() == "kernel-core-7.0.42-2.fc41.x86_64"
    assert p.file_name() == "kernel-core-7.0.42-2.fc41.x86_64.rpm"
    assert str(NEVRA("a", 0, "1", "1", "noarch")) == "a-1-1.noarch"


@pytest.mark.parametrize("epoch", ["", "0", None, 0])
def test_every_spelling_of_no_epoch_is_epoch_0(epoch):
    assert NEVRA.of("a", epoch, "1", "1", "noarch") == NEVRA("a", 0, "1", "1", "noarch")
    assert NEVRA.from_koji({"name": "a", "epoch": epoch, "version": "1", "release": "1", "arch": "noarch"}) == \
        NEVRA("a", 0, "1", "1", "noarch")


def test_with_evr_takes_the_release_after_the_last_dash():
    assert NEVRA.with_evr("k", "1:7.0.42-2") == NEVRA("k", 1, "7.0.42", "2", "")
    assert NEVRA.with_evr("k", "6.1-rc1-2") == NEVRA("k", 0, "6.1-rc1", "2", "")
    for bad in ("6.1", "x:6.1-2", "-2", "6.1-"):
        with pytest.raises(ValueError, match="is not an"):
            NEVRA.with_evr("k", bad)


@pytest.mark.parametrize("name", ["kernel-core", "python3-rpm", "libstdc++", "_x", "perl-Foo.Bar", "a_b"])
def test_rpm_names_are_names(name):
    assert NAME_RE.match(name)


@pytest.mark.parametrize("name", ["", "foo bar", "foo,bar", "-foo", ".foo", "foo/bar", "foo\nbar", "föö", "a>=1",
                                  "a%{b}", "a'b"])
def test_what_rpm_refuses_in_a_name_is_no_name(name):
    assert not NAME_RE.match(name)
