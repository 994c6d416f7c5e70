"""Shared fixtures: the repository's checkpoints and the wmapc binary to compare with."""

import json
import os
import pathlib
import struct

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HF = ROOT / "tests" / "fixtures" / "hf"


@pytest.fixture(scope="session")
def hf() -> pathlib.Path:
    return HF


@pytest.fixture(scope="session")
def wmapc() -> pathlib.Path:
    """The CLI built by `cargo build` (or $WMAPC): the reference the package must match."""
    candidates = [os.environ.get("WMAPC")] + [
        str(ROOT / "target" / p / "wmapc") for p in ("debug", "release")
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return pathlib.Path(c)
    pytest.fail("no wmapc binary: run `cargo build` first or set WMAPC")


def read_safetensors(path: pathlib.Path):
    """(header without __metadata__, data bytes) of a safetensors file, parsed by hand so
    the test depends on nothing but the format."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, raw[8 + n :]
