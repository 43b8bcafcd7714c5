"""The kojid plugin's configuration: validated strictly, every error naming the key at fault."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.cliopts import parse_byte_size
from mkosi_initrd_builder.util.errors import PluginConfigError
from mkosi_initrd_builder.plugin.config import KEYS, Isolation, PluginConfig, parse_plugin_config

TOP = Path(__file__).resolve().parents[2]
CONF = Path("/etc/kojid/plugins/mkosi_initrd.conf")


def parse(text: str) -> PluginConfig:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parse_plugin_config(parser, CONF)


def test_shipped_example_config_is_valid():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(TOP / "koji_plugin" / "mkosi_initrd.conf")
    config = parse_plugin_config(parser, CONF)
    assert config.packages == {"mkosi-initrd-initrd"}
    assert config.cache_dir == Path("/var/cache/kojid/mkosi-initrd")


def test_full_config_is_parsed():
    config = parse("""
[mkosi_initrd]
packages = mkosi-initrd-initrd, other-initrd
  third
tags = f42-build f43-build
tag_extra = mkosi_initrd.enabled
cache_dir = /srv/cache
max_size = 1.5G
jobs = 8
retries = 2
fetch_timeout = 60
isolation = tag
""")
    assert config == PluginConfig(packages=frozenset({"mkosi-initrd-initrd", "other-initrd", "third"}),
                                  tags=frozenset({"f42-build", "f43-build"}), tag_extra="mkosi_initrd.enabled",
                                  cache_dir=Path("/srv/cache"), max_size=int(1.5 * 1024 ** 3), jobs=8, retries=2,
                                  fetch_timeout=60, isolation=Isolation.TAG)
    assert config.retry_policy().file_timeout == 60
    assert config.setting_spellings()["max_bytes"] == "[mkosi_initrd] max_size"


def test_defaults_come_from_the_key_table():
    config = parse("[mkosi_initrd]\npackages = p\n")
    for key in KEYS[1:]:
        assert getattr(config, key.name) == key.default


@pytest.mark.parametrize("text, key, detail", [
    ("[mkosi_initrd]\n", "[mkosi_initrd] packages", "missing"),
    ("[mkosi_initrd]\npackages =\n", "[mkosi_initrd] packages", "at least one"),
    ("[mkosi_initrd]\npackages = good bad/name\n", "[mkosi_initrd] packages", "'bad/name'"),
    ("[mkosi_initrd]\npackages = p\ncolour = blue\n", "[mkosi_initrd] colour", "unknown key"),
    ("[mkosi_initrd]\npackages = p\njobs = 0\n", "[mkosi_initrd] jobs", "between 1 and 64"),
    ("[mkosi_initrd]\npackages = p\njobs = many\n", "[mkosi_initrd] jobs", "not an integer"),
    ("[mkosi_initrd]\npackages = p\nretries = 11\n", "[mkosi_initrd] retries", "between 1 and 10"),
    ("[mkosi_initrd]\npackages = p\nmax_size = lots\n", "[mkosi_initrd] max_size", "not a size"),
    ("[mkosi_initrd]\npackages = p\nmax_size = 0\n", "[mkosi_initrd] max_size", "positive"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = var/cache\n", "[mkosi_initrd] cache_dir", "absolute"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /\n", "[mkosi_initrd] cache_dir", "top-level directory /,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = //\n", "[mkosi_initrd] cache_dir", "top-level directory /,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /var\n", "[mkosi_initrd] cache_dir", "top-level directory /var,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = //var/\n", "[mkosi_initrd] cache_dir", "top-level directory /var,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /tmp\n", "[mkosi_initrd] cache_dir", "top-level directory /tmp,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /usr/lib/cache\n", "[mkosi_initrd] cache_dir", "below /usr,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /etc/kojid\n", "[mkosi_initrd] cache_dir", "below /etc,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /var/cache/../..\n", "[mkosi_initrd] cache_dir", "'..'"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /var/./cache\n", "[mkosi_initrd] cache_dir", "'.'"),
    ("[mkosi_initrd]\npackages = p\ntags = f42 build!\n", "[mkosi_initrd] tags", "'build!'"),
    ("[mkosi_initrd]\npackages = p\ntag_extra = no spaces\n", "[mkosi_initrd] tag_extra", "not a tag extra"),
    ("[mkosi_initrd]\npackages = p\nisolation = simple\n", "[mkosi_initrd] isolation", "not one of nspawn, tag"),
    ("[mkosi_initrd]\npackages = p\n[paths]\nx = y\n", "[paths]", "unknown section"),
    ("[global]\npackages = p\n", "[global]", "unknown section"),
])
def test_bad_config_names_the_key(text, key, detail):
    with pytest.raises(PluginConfigError) as e:
        parse(text)
    assert e.value.key == key
    assert str(e.value).startswith(f"{CONF}: {key}: ")
    assert detail in str(e.value)


@pytest.mark.parametrize("text, path", [
    ("//srv//cache/", "/srv/cache"),
    ("/var/cache/kojid/mkosi-initrd/", "/var/cache/kojid/mkosi-initrd"),
])
def test_cache_dir_is_normalised(text, path):
    config = parse(f"[mkosi_initrd]\npackages = p\ncache_dir = {text}\n")
    assert str(config.cache_dir) == path


def test_skip_reason_says_why_a_build_is_left_alone():
    config = parse("[mkosi_initrd]\npackages = mkosi-initrd-initrd\ntags = f42-build\n"
                   "tag_extra = mkosi_initrd.enabled\n")
    assert config.skip_reason("bash", "f42-build", {"mkosi_initrd.enabled": True}) == "bash is not in packages"
    assert "f41-build is not in tags" in config.skip_reason("mkosi-initrd-initrd", "f41-build", {})
    assert "mkosi_initrd.enabled" in config.skip_reason("mkosi-initrd-initrd", "f42-build", {})
    assert "mkosi_initrd.enabled" in config.skip_reason("mkosi-initrd-initrd", "f42-build",
                                                        {"mkosi_initrd.enabled": "false"})
    assert config.skip_reason("mkosi-initrd-initrd", "f42-build", {"mkosi_initrd.enabled": True}) is None
    assert config.skip_reason("mkosi-initrd-initrd", "f42-build", {"mkosi_initrd.enabled": "yes"}) is None
    # without tags and tag_extra only the package list matters
    anywhere = parse("[mkosi_initrd]\npackages = mkosi-initrd-initrd\n")
    assert anywhere.skip_reason("mkosi-initrd-initrd", "any-tag", {}) is None


@pytest.mark.parametrize("text, size", [("1048576", 1 << 20), ("500M", 500 << 20), ("2g", 2 << 30), ("4 KiB", 4096)])
def test_byte_sizes(text, size):
    assert parse_byte_size(text) == size


def test_library_errors_about_a_setting_name_the_plugins_key():
    from mkosi_initrd_builder.staging.cli import SETTING_FLAGS
    from mkosi_initrd_builder.util.errors import SettingError

    error = SettingError("max_bytes", "the size limit must be positive (got 0)")
    assert str(error) == "max bytes: the size limit must be positive (got 0)"  # the library's own words
    assert str(error.spelled(PluginConfig.setting_spellings())) == \
        "[mkosi_initrd] max_size: the size limit must be positive (got 0)"
    assert str(error.spelled(SETTING_FLAGS)) == "--max-size: the size limit must be positive (got 0)"
    # every setting the plugin's keys feed is one the library can name
    assert set(PluginConfig.setting_spellings()) <= set(SETTING_FLAGS)
