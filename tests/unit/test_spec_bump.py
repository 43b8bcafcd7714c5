"""Bumping a rendered spec: the version only ever grows, the changelog says why, and bad bumps are
refused with one clear line."""

from __future__ import annotations

import shutil

import pytest

from mkosi_initrd_builder.util.errors import BumpError, KernelNotFoundError, SpecError
from mkosi_initrd_builder.spec.bump import plan_bump, read_spec
from mkosi_initrd_builder.spec.inputs import describe_kernel, gather_inputs, release_for
from mkosi_initrd_builder.spec.template import ChangelogEntry, render_spec, write_spec
from mkosi_initrd_builder.building.variants import load_variants
from tests.conftest import FIXTURE_VARIANTS
from tests.unit.spec_support import DATE, PACKAGER, fake_repo, first_inputs, kernel_package

rpm = pytest.importorskip("rpm", reason="needs python3-rpm (make setup)")


@pytest.fixture
def variants_dir(tmp_path):
    d = tmp_path / "variants"
    shutil.copytree(FIXTURE_VARIANTS, d)
    return d


def render_first(spec, repo, variants_dir):
    inputs = first_inputs(repo, load_variants(variants_dir))
    write_spec(render_spec(inputs), spec, inputs.variants)
    return read_spec(spec)


def bump(spec, repo, variants_dir, uname, message=None):
    """What `mkosi-initrd-build bump` does, with a fixed date and packager."""
    current = read_spec(spec)
    kernel = describe_kernel(repo, uname)
    variants = load_variants(variants_dir)
    b = plan_bump(current, kernel, variants, message)
    image = kernel.image_package.nevra
    entry = ChangelogEntry(DATE, PACKAGER, f"{image.version}-{release_for(image, b.build_counter)}", b.entry_lines)
    inputs = gather_inputs(repo, kernel, variants, release="rawhide", build_counter=b.build_counter,
                           changelog=entry.render() + "\n\n" + current.changelog)
    write_spec(render_spec(inputs), spec, variants)
    return read_spec(spec)


def label(rendered):
    return ("0", rendered.version, rendered.release)


def test_new_kernel_restarts_the_counter_and_says_so(tmp_path, variants_dir):
    spec = tmp_path / "s" / "mkosi-initrd-initrd.spec"
    render_first(spec, fake_repo(), variants_dir)
    repo = fake_repo(kernel_package("7.0.43-1", uname="7.0.0-17-synth"))
    after = bump(spec, repo, variants_dir, "7.0.0-17-synth")
    assert (after.version, after.release, after.build_counter) == ("7.0.43", "1^1", 1)
    assert after.changelog.startswith(f"* Tue Nov 14 2023 {PACKAGER} - 7.0.43-1^1\n"
                                      "- Kernel kernel-core 7.0.43-1 (7.0.0-17-synth)\n\n* ")
    assert "- Kernel kernel-core 7.0.42-2 (7.0.0-16-synth); variants: minimal, storage" in after.changelog


def test_changed_variants_bump_the_counter_and_replace_earlier_builds(tmp_path, variants_dir):
    spec = tmp_path / "s" / "mkosi-initrd-initrd.spec"
    repo = fake_repo()
    render_first(spec, repo, variants_dir)
    with open(variants_dir / "minimal.toml", "a") as f:
        f.write("# a change\n")
    after = bump(spec, repo, variants_dir, "7.0.0-16-synth")
    assert (after.release, after.build_counter) == ("2^2", 2)
    assert "- Variants changed: minimal\n" in after.changelog
    (variants_dir / "storage.toml").unlink()
    shutil.copy(FIXTURE_VARIANTS / "storage.toml", variants_dir / "disk.toml")
    after = bump(spec, repo, variants_dir, "7.0.0-16-synth")
    assert after.release == "2^3"
    assert "- Variants added: disk\n- Variants removed: storage\n" in after.changelog
    text = spec.read_text()
    # install-only packages of the same kernel would collide: earlier builds are obsoleted exactly
    assert "Obsoletes:      %{name}-minimal = 7.0.42-2^1\nObsoletes:      %{name}-minimal = 7.0.42-2^2\n" in text
    assert "Obsoletes:      %{name}-disk = 7.0.42-2^2\n" in text
    assert "= 7.0.42-2^3" not in text


def test_bump_with_nothing_changed_is_refused_unless_a_message_says_why(tmp_path, variants_dir):
    spec = tmp_path / "s" / "mkosi-initrd-initrd.spec"
    repo = fake_repo()
    render_first(spec, repo, variants_dir)
    with pytest.raises(BumpError, match="nothing to bump in .*: kernel 7.0.0-16-synth and the variant files are "
                                        "those it was rendered from") as e:
        bump(spec, repo, variants_dir, "7.0.0-16-synth")
    assert "--message" in e.value.hint
    after = bump(spec, repo, variants_dir, "7.0.0-16-synth", message="Rebuild for mkosi 26")
    assert after.release == "2^2" and "- Rebuild for mkosi 26\n" in after.changelog


def test_bump_to_an_older_kernel_is_refused(tmp_path, variants_dir):
    spec = tmp_path / "s" / "mkosi-initrd-initrd.spec"
    render_first(spec, fake_repo(), variants_dir)
    older = fake_repo(kernel_package("7.0.40-1", uname="7.0.0-10-synth"))
    with pytest.raises(BumpError) as e:
        bump(spec, older, variants_dir, "7.0.0-10-synth")
    assert str(e.value).startswith("kernel kernel-core-7.0.40-1 (7.0.0-10-synth) is older than kernel-core-7.0.42-2 "
                                   "(7.0.0-16-synth) in ")
    assert str(e.value).endswith("mkosi-initrd-initrd 7.0.40-1^1 would not upgrade 7.0.42-2^1")
    assert "\n" not in str(e.value)


def test_bump_to_a_kernel_the_repository_lacks_is_refused_in_one_line():
    with pytest.raises(KernelNotFoundError) as e:
        describe_kernel(fake_repo(), "6.9.0-1-amd64")
    assert str(e.value) == ("kernel 6.9.0-1-amd64 not found in repository /srv/fake-repo "
                            "(kernel versions available: 7.0.0-16-synth)")


def test_bump_refuses_a_file_that_is_not_a_rendered_spec(tmp_path):
    other = tmp_path / "other.spec"
    other.write_text("Name: x\nVersion: 1\nRelease: 1\n%description\nx\n%changelog\n")
    with pytest.raises(SpecError, match=r"other.spec: not a spec rendered by mkosi-initrd-build \(missing: "
                                        r"kernel_uname, kernel_name, kernel_evr, build_counter\)"):
        read_spec(other)
    with pytest.raises(SpecError, match="cannot read"):
        read_spec(tmp_path / "missing.spec")


def test_version_grows_monotonically_over_a_series_of_bumps(tmp_path, variants_dir):
    """Kernel updates (including release-only ones, a release that extends the previous one, an
    epoch-less rc series) and rebuilds for the same kernel: every step is newer to rpm."""
    spec = tmp_path / "s" / "mkosi-initrd-initrd.spec"
    steps = [
        ("7.0.42-2", "7.0.0-16-synth", None),
        ("7.0.42-2", "7.0.0-16-synth", "rebuild"),
        ("7.0.42-2.1", "7.0.0-16a-synth", None),    # the previous release is a prefix of this one
        ("7.0.42-3", "7.0.0-17-synth", None),
        ("7.0.42-3", "7.0.0-17-synth", "rebuild"),
        ("7.0.42-3", "7.0.0-17-synth", "rebuild again"),
        ("7.1.0-0.rc1.1", "7.1.0-0.rc1-synth", None),
        ("7.1.0-0.rc2.1", "7.1.0-0.rc2-synth", None),
        ("7.1.0-1", "7.1.0-1-synth", None),
        ("7.10.0-1", "7.10.0-1-synth", None),
    ]
    seen = []
    for i, (evr, uname, message) in enumerate(steps):
        repo = fake_repo(kernel_package(evr, uname=uname))
        rendered = render_first(spec, repo, variants_dir) if i == 0 else bump(spec, repo, variants_dir, uname, message)
        if seen:
            assert rpm.labelCompare(label(rendered), seen[-1]) == 1, (label(rendered), seen[-1])
        seen.append(label(rendered))
    assert [f"{v}-{r}" for _, v, r in seen] == [
        "7.0.42-2^1", "7.0.42-2^2", "7.0.42-2.1^1", "7.0.42-3^1", "7.0.42-3^2", "7.0.42-3^3",
        "7.1.0-0.rc1.1^1", "7.1.0-0.rc2.1^1", "7.1.0-1^1", "7.10.0-1^1"]
    # a plain ".N" counter would have broken the third step: rpm orders 2.2 after 2.1.1
    assert rpm.labelCompare(("0", "7.0.42", "2.2"), ("0", "7.0.42", "2.1.1")) == 1
