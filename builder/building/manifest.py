"""manifest.json: what went into one variant's image and what came out (the builder → spec contract)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkosi_initrd_builder.util.errors import VerifyError
from mkosi_initrd_builder.util.fsutil import atomic_write, hash_bytes

MANIFEST_NAME = "manifest.json"
# 2: the firmware added for the kept modules ("firmware", "firmware-missing", "firmware-packages").
MANIFEST_VERSION = 2


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def inputs_hash(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every build input: the provenance record and the cache key."""
    return hash_bytes(canonical_json(inputs).encode())


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST_NAME
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VerifyError(f"{path}: no manifest (is {directory} a variant output directory?)") from None
    except (OSError, ValueError) as e:
        raise VerifyError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(data, dict) or data.get("manifest-version") != MANIFEST_VERSION:
        raise VerifyError(f"{path}: not a version {MANIFEST_VERSION} manifest")
    for key in ("variant", "kernel", "packages", "outputs", "inputs-hash", "firmware", "firmware-wanted",
                "firmware-missing", "firmware-packages"):
        if key not in data:
            raise VerifyError(f"{path}: manifest lacks {key!r}")
    return data
