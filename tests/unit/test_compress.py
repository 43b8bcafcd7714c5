"""The initrd's compressor: a variant's zstd level and parameters, as the zstd command reads them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.variants import load_variants
from mkosi_initrd_builder.util.compress import (LIBZSTD_VERSION, ZSTD_PARAMETERS, ZSTD_STRATEGIES, ZstdSettings,
                                                 ZstdTuning, decompress_bytes)
from tests.conftest import FIXTURE_VARIANTS, PRODUCT_VARIANTS, require_tools

# The zstd command's spelling of each parameter in --zstd= (programs/zstdcli.c).
CLI_NAMES = {"window-log": "wlog", "chain-log": "clog", "hash-log": "hlog", "search-log": "slog",
             "min-match": "mml", "target-length": "tlen"}


def corpus() -> bytes:
    """A few MB of varied real bytes (this interpreter's library and text files), so window, chain and
    match settings change the output; what they are does not matter, only that both sides see them."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))
    return data[:4 << 20]


def cli_argument(tuning: ZstdTuning) -> str:
    return ",".join(f"strategy={ZSTD_STRATEGIES.index(v) + 1}" if k == "strategy" else f"{CLI_NAMES[k]}={v}"
                    for k, v in tuning.values)


def zstd_cli_version() -> str:
    out = subprocess.run(["zstd", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split(" v", 1)[1].split(",", 1)[0].strip()


def test_every_parameter_has_a_cli_name():
    assert set(CLI_NAMES) == {p.key for p in ZSTD_PARAMETERS}


def test_tuned_variants_compress_as_the_zstd_command_would_with_the_same_settings(tmp_path):
    """The same bytes as `zstd -<level> -T1/-T2 --zstd=...` for every variant that tunes zstd (the
    product's and the fixture's): the variant file's keys mean what zstd's do, and the multi-threaded
    output does not depend on the number of threads."""
    require_tools("zstd")
    if zstd_cli_version() != LIBZSTD_VERSION:
        pytest.skip(f"the zstd command is {zstd_cli_version()}, python3-zstandard's libzstd {LIBZSTD_VERSION}: "
                    "another libzstd writes other bytes for the same settings")
    tuned = [v for d in (PRODUCT_VARIANTS, FIXTURE_VARIANTS) for v in load_variants(d) if v.zstd_parameters.values]
    assert tuned, "no variant tunes zstd any more"
    data = corpus()
    src = tmp_path / "initrd.cpio"
    src.write_bytes(data)
    for variant in tuned:
        for threads in ("-T1", "-T2"):
            cli = subprocess.run(["zstd", "-q", f"-{variant.compress_level}", threads,
                                  f"--zstd={cli_argument(variant.zstd_parameters)}", "-c", str(src)],
                                 capture_output=True, check=True).stdout
            assert variant.compression.compress(data) == cli, (variant.name, threads)
        plain = ZstdSettings(variant.compress_level).compress(data)
        assert plain != cli, f"{variant.name}: the parameters changed nothing: they were not applied"
        assert decompress_bytes(cli, src) == data


def test_the_output_carries_a_checksum_the_zstd_command_checks(tmp_path):
    require_tools("zstd")
    out = tmp_path / "initrd.cpio.zst"
    out.write_bytes(ZstdSettings(3, ZstdTuning((("min-match", 3),))).compress(corpus()))
    listing = subprocess.run(["zstd", "-lv", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Check: XXH64" in listing
    damaged = bytearray(out.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    out.write_bytes(bytes(damaged))
    assert subprocess.run(["zstd", "-tq", str(out)], capture_output=True).returncode != 0


def test_tuning_is_recorded_as_written():
    tuning = ZstdTuning((("strategy", "btopt"), ("min-match", 3)))
    assert tuning.to_dict() == {"strategy": "btopt", "min-match": 3}
    params = ZstdSettings(9, tuning).compression_parameters()
    level9 = ZstdSettings(9).compression_parameters()
    assert (params.strategy, params.min_match) == (ZSTD_STRATEGIES.index("btopt") + 1, 3)
    assert (params.window_log, params.chain_log, params.hash_log, params.search_log, params.target_length) == \
        (level9.window_log, level9.chain_log, level9.hash_log, level9.search_log, level9.target_length)
