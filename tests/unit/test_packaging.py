"""What an installed builder relies on: its data found through importlib.resources, tools found on
PATH, no path into a checkout, and one version across setup.cfg, the package and its RPM spec."""

from __future__ import annotations

import configparser
import re
import tokenize

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.util.resources import kernel_install_dir, product_variants_dir, spec_template
from mkosi_initrd_builder.util.tools import tool_path
from tests.conftest import TOP


def test_package_data_is_spec_itself_in_a_checkout():
    """`make setup` installs the package editable: the data is the spec/ folder, not a copy."""
    assert product_variants_dir().samefile(TOP / "spec" / "variants")
    assert spec_template().samefile(TOP / "spec" / "mkosi-initrd-initrd.spec.in")
    assert kernel_install_dir().samefile(TOP / "spec" / "kernel-install")


def test_tools_come_from_path_unless_a_tools_directory_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("MKOSI_INITRD_TOOLS", raising=False)
    assert tool_path() == "/usr/bin:/bin"
    monkeypatch.setenv("MKOSI_INITRD_TOOLS", str(tmp_path))
    assert tool_path() == f"{tmp_path}/bin:/usr/bin:/bin"


def test_product_code_holds_no_checkout_paths():
    """Nothing is found relative to the package's own files, and no string names .tools."""
    for path in sorted((TOP / "builder").glob("*.py")):
        with tokenize.open(path) as f:
            tokens = list(tokenize.generate_tokens(f.readline))
        names = {t.string for t in tokens if t.type == tokenize.NAME}
        strings = [t.string for t in tokens if t.type == tokenize.STRING]
        assert "__file__" not in names, f"{path.name} locates files from its own path"
        assert not [s for s in strings if ".tools" in s], f"{path.name} names the checkout's .tools"


def test_one_version_in_setup_cfg_the_package_and_the_builder_spec():
    cfg = configparser.ConfigParser()
    cfg.read(TOP / "setup.cfg")
    spec = (TOP / "spec" / "mkosi-initrd-builder.spec").read_text()
    spec_version = re.search(r"^Version:\s*(\S+)$", spec, re.MULTILINE).group(1)
    assert cfg["metadata"]["version"] == __version__ == spec_version
