"""The CPU path: names and bytes equal to `wmapc load --out`, through DLPack without a copy."""

import subprocess

import numpy as np
import pytest

import wmap
from conftest import read_safetensors


@pytest.mark.parametrize("fixture", ["llama", "llama_tied", "qwen3_moe"])
def test_names_and_bytes_equal_wmapc_load_out(fixture, hf, wmapc, tmp_path):
    out = tmp_path / "out"
    subprocess.run(
        [str(wmapc), "load", str(hf / fixture), "--out", str(out), "--quiet"],
        check=True,
        capture_output=True,
    )
    header, data = read_safetensors(out / "model.safetensors")
    store = wmap.load(hf / fixture)
    assert sorted(store.keys()) == sorted(header)
    for name, entry in header.items():
        t = store[name]
        assert isinstance(t, wmap.Tensor)
        assert t.shape == entry["shape"], name
        start, end = entry["data_offsets"]
        got = np.from_dlpack(t.as_uint8())
        assert got.tobytes() == data[start:end], name


def test_dlpack_does_not_copy(hf):
    store = wmap.load(hf / "llama")
    t = store["layers.0.attention.qkv"]
    a = np.from_dlpack(t.as_uint8())
    assert a.ctypes.data == t.data_ptr
    assert a.nbytes == t.nbytes == 256 * 128 * 2
    # A second export points at the same bytes again.
    assert np.from_dlpack(t.as_uint8()).ctypes.data == t.data_ptr
    assert t.__dlpack_device__() == (1, 0)


def test_arrays_outlive_the_store(hf):
    store = wmap.load(hf / "llama")
    expect = bytes(np.from_dlpack(store["embed"].as_uint8()))
    a = np.from_dlpack(store["embed"].as_uint8())
    del store
    import gc

    gc.collect()
    assert a.tobytes() == expect


def test_tied_names_share_bytes(hf):
    store = wmap.load(hf / "llama_tied")
    assert store["lm_head"].data_ptr == store["embed"].data_ptr


def test_float32_scales_reach_numpy_typed(hf):
    store = wmap.load(hf / "qwen3_moe", quant="nf4")
    q = store["layers.0.attention.qkv"]
    absmax = np.from_dlpack(q.quant_state["absmax"])
    assert absmax.dtype == np.float32
    assert absmax.shape == (256 * 128 // 64,)
    assert np.from_dlpack(q.scales).ctypes.data == absmax.ctypes.data


def test_copy_true_is_refused(hf):
    t = wmap.load(hf / "llama")["embed"].as_uint8()
    with pytest.raises(BufferError):
        t.__dlpack__(copy=True)
