"""The garbage collector's arrangement around dnf's depsolve (staging/resolve.py): older objects are
frozen while dnf runs its full collections, what dnf makes is still collected, and the process's
collector is left as it was found."""

from __future__ import annotations

import gc
import weakref

import pytest

from mkosi_initrd_builder.staging.resolve import _collections_see_only_new_objects


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture(autouse=True)
def unfrozen():
    # no automatic collection between a test's steps: only the ones it runs count
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.disable()
    yield
    gc.unfreeze()
    gc.enable()


def test_older_objects_are_frozen_and_thawed_after():
    older = Node()
    with _collections_see_only_new_objects():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    # thawed objects are collected as before
    ref = weakref.ref(older)
    del older
    gc.collect()
    assert ref() is None


def test_cycles_made_meanwhile_are_collected_meanwhile():
    with _collections_see_only_new_objects():
        ref = weakref.ref(Node())
        gc.collect()
        assert ref() is None


def test_older_garbage_waits_for_the_thaw():
    ref = weakref.ref(Node())
    with _collections_see_only_new_objects():
        gc.collect()
        assert ref() is not None
    gc.collect()
    assert ref() is None


def test_thawed_after_an_error():
    with pytest.raises(RuntimeError):
        with _collections_see_only_new_objects():
            raise RuntimeError("dnf failed")
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_objects_keeps_its_arrangement():
    gc.freeze()
    frozen = gc.get_freeze_count()
    with _collections_see_only_new_objects():
        assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == frozen
