"""Variant files: the schema, its error messages, and the shipped variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.errors import VariantError
from mkosi_initrd_builder.building.variants import (
    BASE_REMOVALS, FIELDS_BY_KEY, VARIANT_FIELDS, Base, OutputFormat, load_variant, load_variants,
)
from tests.conftest import FIXTURE_VARIANTS, PRODUCT_VARIANTS

GOLDEN = Path(__file__).parent / "golden"

MINIMAL = """
summary = "s"
description = "d"
packages = ["a"]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_minimal_variant_gets_defaults(tmp_path):
    v = load_variant(write(tmp_path, "tiny", MINIMAL))
    assert v.name == "tiny"
    assert v.base is Base.mkosi_initrd
    assert v.formats == (OutputFormat.initrd,)
    assert v.size_budget == 0
    assert v.packages == ("a",)


@pytest.mark.parametrize("text, key, message", [
    (MINIMAL + "colour = 'blue'\n", "colour", "unknown key"),
    ('description = "d"\n', "summary", "required key is missing"),
    (MINIMAL + "formats = ['uki']\n", "formats", "must include 'initrd'"),
    (MINIMAL + "formats = ['initrd', 'iso']\n", "formats", "unknown format 'iso'"),
    (MINIMAL + "base = 'dracut'\n", "base", "unknown base 'dracut'"),
    (MINIMAL + "size-budget = 'lots'\n", "size-budget", "is not a size"),
    (MINIMAL + "size-budget = -1\n", "size-budget", "must be positive"),
    (MINIMAL + "kernel-modules-include = ['(']\n", "kernel-modules-include", "not a valid regular expression"),
    (MINIMAL.replace('["a"]', '["a", "a"]'), "packages", "listed twice: a"),
    (MINIMAL.replace('["a"]', '"a"'), "packages", "expected a list of strings"),
    (MINIMAL + "[mkosi.Content]\nLocalMirror = 'http://x'\n", "mkosi.Content.LocalMirror", "cannot be passed through"),
    (MINIMAL + "[mkosi.Nonsense]\nFoo = 'x'\n", "mkosi.Nonsense", "unknown mkosi section"),
    (MINIMAL + "[mkosi.Content]\nwith_docs = true\n", "mkosi.Content.with_docs", "not an mkosi setting name"),
    ('summary = "s"\ndescription = "d"\nbase = "none"\n', "packages", "needs at least one package"),
])
def test_invalid_variant_error_names_file_and_key(tmp_path, text, key, message):
    path = write(tmp_path, "bad", text)
    with pytest.raises(VariantError) as e:
        load_variant(path)
    assert e.value.key == key
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert message in str(e.value)


@pytest.mark.parametrize("text, key, message", [
    # a carriage return ends a line for mkosi (str.splitlines), smuggling in a setting the builder owns
    (MINIMAL + '[mkosi.Content]\nWithDocs = "no\\rLocalMirror=http://x"\n', "mkosi.Content.WithDocs", "'\\r'"),
    (MINIMAL + '[mkosi.Content]\nRemoveFiles = ["/a", "/b\\u2028ToolsTree=default"]\n', "mkosi.Content.RemoveFiles",
     "'\\u2028'"),
    (MINIMAL + '[mkosi.Content]\nWithDocs = "no\\u0085Mirror=x"\n', "mkosi.Content.WithDocs", "'\\x85'"),
    (MINIMAL + '[mkosi.Content]\nWithDocs = "a\\u0000b"\n', "mkosi.Content.WithDocs", "'\\x00'"),
    (MINIMAL + '[mkosi.Content]\nWithDocs = "a\\tb"\n', "mkosi.Content.WithDocs", "'\\t'"),
    (MINIMAL + '[mkosi.Content]\nWithDocs = "a\\nb"\n', "mkosi.Content.WithDocs", "single lines"),
    (MINIMAL + '[mkosi.Content]\nRemoveFiles = "/a#b"\n', "mkosi.Content.RemoveFiles", "'#'"),
    (MINIMAL + '[mkosi.Content]\nRemoveFiles = ""\n', "mkosi.Content.RemoveFiles", "resets the setting"),
    (MINIMAL + '[mkosi.Content]\nRemoveFiles = ["/a", " "]\n', "mkosi.Content.RemoveFiles", "resets the setting"),
    (MINIMAL + 'kernel-command-line = "@/etc/shadow"\n', "kernel-command-line", "must not start with '@'"),
    (MINIMAL + 'kernel-command-line = "  @/etc/shadow"\n', "kernel-command-line", "must not start with '@'"),
    (MINIMAL + 'kernel-command-line = "quiet\\nrd.break"\n', "kernel-command-line", "'\\n'"),
    (MINIMAL + 'kernel-command-line = "quiet\\rrd.break"\n', "kernel-command-line", "'\\r'"),
    (MINIMAL + 'kernel-command-line = "quiet\\u0000"\n', "kernel-command-line", "'\\x00'"),
    (MINIMAL + 'kernel-command-line = 1\n', "kernel-command-line", "expected a string"),
    (MINIMAL.replace('summary = "s"', 'summary = "s\\rx"'), "summary", "'\\r'"),
    (MINIMAL.replace('description = "d"', 'description = "d\\u001b[2J"'), "description", "'\\x1b'"),
    (MINIMAL + 'profiles = ["lv\\rm"]\n', "profiles", "'\\r'"),
])
def test_hostile_strings_are_refused_at_load_naming_file_and_key(tmp_path, text, key, message):
    path = write(tmp_path, "hostile", text)
    with pytest.raises(VariantError) as e:
        load_variant(path)
    assert e.value.key == key
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value) and "\r" not in str(e.value)  # the error itself stays one line


def test_kernel_command_line_is_folded_as_ukify_folds_it(tmp_path):
    v = load_variant(write(tmp_path, "c", MINIMAL + 'kernel-command-line = "  console=tty0   quiet  "\n'))
    assert v.kernel_command_line == "console=tty0 quiet"
    v = load_variant(write(tmp_path, "c", MINIMAL + 'kernel-command-line = "init=/x@y"\n'))
    assert v.kernel_command_line == "init=/x@y"  # '@' is refused only where ukify reads a file name


def test_description_keeps_lines_and_tabs(tmp_path):
    v = load_variant(write(tmp_path, "d", MINIMAL.replace('description = "d"', 'description = "one\\n\\ttwo"')))
    assert v.description == "one\n\ttwo"


def test_invalid_toml_names_file(tmp_path):
    path = write(tmp_path, "broken", "summary = \n")
    with pytest.raises(VariantError, match=rf"^{path}: invalid TOML"):
        load_variant(path)


def test_variant_name_comes_from_file_name(tmp_path):
    with pytest.raises(VariantError, match="must match"):
        load_variant(write(tmp_path, "Bad Name", MINIMAL))


def test_unknown_variant_lists_available(tmp_path):
    write(tmp_path, "one", MINIMAL)
    write(tmp_path, "two", MINIMAL)
    with pytest.raises(VariantError, match=r"unknown variant 'three' \(available: one, two\)"):
        load_variants(tmp_path, ["three"])
    assert [v.name for v in load_variants(tmp_path, ["two", "one"])] == ["two", "one"]


def test_empty_variants_dir_is_an_error(tmp_path):
    with pytest.raises(VariantError, match="no variant files"):
        load_variants(tmp_path)


def test_size_budget_units(tmp_path):
    for text, size in (("'60M'", 60 << 20), ("'1.5G'", int(1.5 * (1 << 30))), ("'512K'", 512 << 10), ("4096", 4096)):
        v = load_variant(write(tmp_path, "s", MINIMAL + f"size-budget = {text}\n"))
        assert v.size_budget == size


def test_mkosi_passthrough_keeps_order_and_values(tmp_path):
    v = load_variant(write(tmp_path, "p", MINIMAL + "[mkosi.Content]\nRemoveFiles = ['/a', '/b']\nWithDocs = false\n"))
    assert v.mkosi == (("Content", "RemoveFiles", ("/a", "/b")), ("Content", "WithDocs", ("no",)))


def test_every_registered_format_is_a_formats_value_with_its_file_named_in_the_help(tmp_path):
    from mkosi_initrd_builder.building.formats import FORMATS

    assert list(FORMATS) == list(OutputFormat)
    for kind, fmt in FORMATS.items():
        assert f"'{kind.value}' ({fmt.file_name})" in FIELDS_BY_KEY["formats"].help
    path = tmp_path / "v.toml"
    path.write_text(MINIMAL + "formats = [" + ", ".join(f'"{k.value}"' for k in reversed(list(FORMATS))) + "]\n")
    assert load_variant(path).formats == tuple(FORMATS)  # build order, whatever the file's order


def test_variants_readme_documents_every_field():
    readme = (PRODUCT_VARIANTS / "README.md").read_text()
    for f in VARIANT_FIELDS:
        assert f"`{f.key}`" in readme, f"spec/variants/README.md does not document {f.key}"


@pytest.mark.parametrize("directory", [PRODUCT_VARIANTS, FIXTURE_VARIANTS])
def test_shipped_variants_load(directory):
    variants = load_variants(directory)
    assert variants


def test_product_variants_golden():
    """The parsed form of spec/variants is pinned; UPDATE_GOLDEN=1 rewrites the golden file."""
    got = json.dumps([v.to_dict() for v in load_variants(PRODUCT_VARIANTS)], indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / "product-variants.json"
    import os
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text()


def test_product_variants_cover_virt_and_generic():
    names = {v.name for v in load_variants(PRODUCT_VARIANTS)}
    assert {"virt", "generic"} <= names


@pytest.mark.parametrize("package", ["kmod", "libstdc++", "kernel-core(x86-64)", "perl(Foo::Bar)", "/usr/bin/busybox",
                                     "python3.13-libs", "_private"])
def test_package_names_and_provides_are_accepted(tmp_path, package):
    assert load_variant(write(tmp_path, "ok", MINIMAL.replace('packages = ["a"]', f'packages = ["{package}"]'))) \
        .packages == (package,)


@pytest.mark.parametrize("package", ["kmod, lvm2", "kmod lvm2", "kmod >= 30", "kmod>=30", "%{_bindir}/sh", "-kmod",
                                     ".hidden", "kmod\\tlvm2", "k'mod"])
def test_what_is_no_rpm_name_or_provide_is_refused(tmp_path, package):
    """mkosi splits Packages= on whitespace and commas: one value must not become two packages."""
    path = write(tmp_path, "bad", MINIMAL.replace('packages = ["a"]', f'packages = ["{package}"]'))
    with pytest.raises(VariantError, match="is not a valid package name or provide") as e:
        load_variant(path)
    assert e.value.key == "packages"


@pytest.mark.parametrize("name, message", [
    ("etc/mdadm.conf", "absolute, normalised"),
    ("/etc/../boot/x", "absolute, normalised"),
    ("/etc//x", "absolute, normalised"),
    ("/etc/./x", "absolute, normalised"),
    ("/etc", "absolute, normalised"),
    ("/boot/x", "below /etc or /usr"),
    ("/usr/lib/modules/6.1/extra.ko", "below /usr/lib/modules"),
    ("/etc/a\nb", "control or line-break"),
])
def test_variant_files_outside_etc_and_usr_or_unnormalised_are_refused(tmp_path, name, message):
    path = write(tmp_path, "bad", MINIMAL + f"[files]\n{json.dumps(name)} = \"x\\n\"\n")
    with pytest.raises(VariantError) as e:
        load_variant(path)
    assert str(path) in str(e.value) and "files." in str(e.value) and message in str(e.value)


def test_variant_files_keep_contents_and_are_sorted(tmp_path):
    v = load_variant(write(tmp_path, "f", MINIMAL + '[files]\n"/usr/z" = "z"\n"/etc/a.conf" = """\nA 1\n\tB\n"""\n'))
    assert v.files == (("/etc/a.conf", "A 1\n\tB\n"), ("/usr/z", "z"))
    assert v.to_dict()["files"] == [["/etc/a.conf", "A 1\n\tB\n"], ["/usr/z", "z"]]


PROFILE = '[[uki-profiles]]\nid = "rescue"\ntitle = "Rescue"\nkernel-command-line = "console=ttyS0 rescue"\n'


def test_uki_profiles_parse_in_order_into_the_manifest_form(tmp_path):
    text = MINIMAL + 'formats = ["initrd", "uki"]\n' + PROFILE + PROFILE.replace('"rescue"', '"debug"')
    v = load_variant(write(tmp_path, "p", text))
    assert [p.id for p in v.uki_profiles] == ["rescue", "debug"]
    assert v.to_dict()["uki-profiles"][0] == {"id": "rescue", "title": "Rescue",
                                              "kernel-command-line": "console=ttyS0 rescue"}


@pytest.mark.parametrize("profiles, key, message", [
    (PROFILE, "uki-profiles", "need the 'uki' format"),
    (PROFILE.replace('id = "rescue"', 'id = "Rescue Me"'), "uki-profiles[1].id", "must match"),
    (PROFILE.replace('title = "Rescue"\n', ''), "uki-profiles[1].title", "required key is missing"),
    (PROFILE + 'colour = "red"\n', "uki-profiles[1].colour", "unknown key"),
    (PROFILE.replace('"console=ttyS0 rescue"', '"@/etc/passwd"'), "uki-profiles[1].kernel-command-line", "'@'"),
    (PROFILE.replace('"console=ttyS0 rescue"', '"  "'), "uki-profiles[1].kernel-command-line", "must not be empty"),
    (PROFILE + PROFILE, "uki-profiles", "listed twice: rescue"),
    ('uki-profiles = "rescue"\n', "uki-profiles", "expected [[uki-profiles]] tables"),
])
def test_bad_uki_profiles_are_refused_naming_file_and_key(tmp_path, profiles, key, message):
    formats = "" if "need the" in message else 'formats = ["initrd", "uki"]\n'
    path = write(tmp_path, "bad", MINIMAL + formats + profiles)
    with pytest.raises(VariantError) as e:
        load_variant(path)
    assert str(path) in str(e.value) and key in str(e.value) and message in str(e.value), str(e.value)


ADDON = '[[uki-addons]]\nname = "debug"\nkernel-command-line = "rd.debug"\n'


@pytest.mark.parametrize("addons, key, message", [
    (ADDON, "uki-addons", "need the 'uki' format"),
    (ADDON.replace('"debug"', '"../x"'), "uki-addons[1].name", "must match"),
    (ADDON.replace('"rd.debug"', '""'), "uki-addons[1].kernel-command-line", "must not be empty"),
    (ADDON + ADDON, "uki-addons", "listed twice: debug"),
    (ADDON + 'title = "t"\n', "uki-addons[1].title", "unknown key"),
])
def test_bad_uki_addons_are_refused_naming_file_and_key(tmp_path, addons, key, message):
    formats = "" if "need the" in message else 'formats = ["initrd", "uki"]\n'
    path = write(tmp_path, "bad", MINIMAL + formats + addons)
    with pytest.raises(VariantError) as e:
        load_variant(path)
    assert str(path) in str(e.value) and key in str(e.value) and message in str(e.value), str(e.value)


def test_remove_files_parse_and_follow_the_builders_own(tmp_path):
    v = load_variant(write(tmp_path, "slim", MINIMAL + """
compress-level = 12
[[remove-files]]
reason = "no btrfs module"
paths = ["/usr/*bin/fsck.btrfs", "/usr/lib*/**/libbtrfs*.so*"]
"""))
    assert v.compress_level == 12
    assert v.to_dict()["remove-files"] == [{"reason": "no btrfs module",
                                            "paths": ["/usr/*bin/fsck.btrfs", "/usr/lib*/**/libbtrfs*.so*"]}]
    assert v.removals[:len(BASE_REMOVALS)] == BASE_REMOVALS
    assert v.removals[-1].reason == "no btrfs module"
    assert load_variant(write(tmp_path, "own", MINIMAL + 'base = "none"\n')).removals == ()


def test_compress_level_defaults_to_nine(tmp_path):
    v = load_variant(write(tmp_path, "tiny", MINIMAL))
    assert v.compress_level == 9 and v.zstd_parameters.values == () and v.to_dict()["zstd-parameters"] == {}


def test_zstd_parameters_parse_in_the_order_written(tmp_path):
    v = load_variant(write(tmp_path, "tuned", MINIMAL + """
[zstd-parameters]
min-match = 3
strategy = "btopt"
window-log = 23
"""))
    assert v.zstd_parameters.values == (("min-match", 3), ("strategy", "btopt"), ("window-log", 23))
    assert v.to_dict()["zstd-parameters"] == {"min-match": 3, "strategy": "btopt", "window-log": 23}
    assert v.compression.level == 9 and v.compression.tuning == v.zstd_parameters


@pytest.mark.parametrize("tables, key, message", [
    ('[[remove-files]]\nreason = "r"\npaths = ["usr/bin/x"]\n', "remove-files[1].paths", "absolute, normalised"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/../etc/x"]\n', "remove-files[1].paths", "absolute, normalised"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/var/x"]\n', "remove-files[1].paths", "below /etc or /usr"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/lib/modules/*/x"]\n', "remove-files[1].paths",
     "below /usr/lib/modules"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/a**/x"]\n', "remove-files[1].paths", "whole path component"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/a b"]\n', "remove-files[1].paths", "whitespace"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/a,b"]\n', "remove-files[1].paths", "must not contain ','"),
    ('[[remove-files]]\nreason = "r"\npaths = []\n', "remove-files[1].paths", "non-empty list"),
    ('[[remove-files]]\npaths = ["/usr/x"]\n', "remove-files[1].reason", "required key is missing"),
    ('[[remove-files]]\nreason = ""\npaths = ["/usr/x"]\n', "remove-files[1].reason", "must not be empty"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/x"]\n[[remove-files]]\nreason = "s"\npaths = ["/usr/x"]\n',
     "remove-files", "listed twice: /usr/x"),
    ('[[remove-files]]\nreason = "r"\npaths = ["/usr/bin/localedef"]\n', "remove-files",
     "the builder's own removals"),
    ("compress-level = 20\n", "compress-level", "from 1 to 19"),
    ("compress-level = true\n", "compress-level", "from 1 to 19"),
    ("zstd-parameters = 3\n", "zstd-parameters", "expected a table"),
    ('[zstd-parameters]\nstrategy = "best"\n', "zstd-parameters.strategy", "expected one of fast, dfast"),
    ("[zstd-parameters]\nstrategy = 7\n", "zstd-parameters.strategy", "expected one of"),
    ("[zstd-parameters]\nwindow-log = 24\n", "zstd-parameters.window-log", "from 10 to 23"),
    ("[zstd-parameters]\nmin-match = true\n", "zstd-parameters.min-match", "expected an integer"),
    ("[zstd-parameters]\nmin-match = 2\n", "zstd-parameters.min-match", "from 3 to 7"),
    ("[zstd-parameters]\nwlog = 22\n", "zstd-parameters.wlog", "unknown zstd parameter"),
])
def test_bad_remove_files_and_levels_are_refused_naming_file_and_key(tmp_path, tables, key, message):
    path = write(tmp_path, "bad", MINIMAL + tables)
    with pytest.raises(VariantError) as e:
        load_variant(path)
    assert e.value.key == key
    assert message in str(e.value) and str(path) in str(e.value)
