"""What an installed builder relies on: its data found through importlib.resources, tools found on
PATH, no path into a checkout, and one version across setup.cfg, the package and its RPM spec."""

from __future__ import annotations

import configparser
import re
import tokenize

import pytest

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.util.resources import kernel_install_dir, product_variants_dir, spec_template
from mkosi_initrd_builder.util.tools import find_tool
from mkosi_initrd_builder.util.errors import ToolMissingError
from tests.conftest import TOP


def test_package_data_is_spec_itself_in_a_checkout():
    """`make setup` installs the package editable: the data is the spec/ folder, not a copy."""
    assert product_variants_dir().samefile(TOP / "spec" / "variants")
    assert spec_template().samefile(TOP / "spec" / "mkosi-initrd-initrd.spec.in")
    assert kernel_install_dir().samefile(TOP / "spec" / "kernel-install")


def test_tools_come_from_path_and_nowhere_else(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mkosi").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "mkosi").chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("MKOSI_INITRD_TOOLS", str(tmp_path))  # the old variable means nothing now
    with pytest.raises(ToolMissingError):
        find_tool("mkosi")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/nonexistent")
    assert find_tool("mkosi") == str(tmp_path / "bin" / "mkosi")


def test_product_code_holds_no_checkout_paths():
    """Nothing is found relative to the package's own files, and no string names .tools."""
    paths = sorted((TOP / "builder").rglob("*.py"))
    assert len(paths) > 30  # every subpackage, not only the top level
    for path in paths:
        with tokenize.open(path) as f:
            tokens = list(tokenize.generate_tokens(f.readline))
        names = {t.string for t in tokens if t.type == tokenize.NAME}
        strings = [t.string for t in tokens if t.type == tokenize.STRING]
        assert "__file__" not in names, f"{path.name} locates files from its own path"
        assert not [s for s in strings if ".tools" in s or "MKOSI_INITRD_TOOLS" in s], \
            f"{path.name} names the checkout's .tools"


def test_one_version_in_setup_cfg_the_package_and_the_builder_spec():
    cfg = configparser.ConfigParser()
    cfg.read(TOP / "setup.cfg")
    spec = (TOP / "spec" / "mkosi-initrd-builder.spec").read_text()
    spec_version = re.search(r"^Version:\s*(\S+)$", spec, re.MULTILINE).group(1)
    assert cfg["metadata"]["version"] == __version__ == spec_version
