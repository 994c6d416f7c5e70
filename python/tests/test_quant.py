"""Quantized params in bitsandbytes' form, and the weights manager behind the store."""

import numpy as np
import pytest

import wmap

NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def dequantize_nf4(q) -> np.ndarray:
    """bitsandbytes' dequantize_4bit, in numpy: high nibble first, code * absmax."""
    st = q.quant_state
    packed = np.from_dlpack(q.data).reshape(-1)
    codes = np.empty(packed.size * 2, dtype=np.uint8)
    codes[0::2], codes[1::2] = packed >> 4, packed & 0xF
    code = np.from_dlpack(st["code"])
    absmax = np.from_dlpack(st["absmax"])
    if "state2" in st:
        s2 = st["state2"]
        nested = np.from_dlpack(s2["absmax"]).repeat(s2["blocksize"])[: absmax.size]
        absmax = np.from_dlpack(s2["code"])[absmax] * nested + np.from_dlpack(st["offset"])
    n = int(np.prod(st["shape"]))
    return (code[codes[:n]] * absmax.repeat(st["blocksize"])[:n]).reshape(st["shape"])


@pytest.mark.parametrize("quant", ["nf4", "nf4-dq"])
def test_bnb_state_dequantizes_like_store_get(hf, quant):
    store = wmap.load(hf / "qwen3_moe", quant=quant)
    name = "layers.0.attention.qkv"
    q = store[name]
    assert isinstance(q, wmap.Quantized)
    st = q.quant_state
    assert st["quant_type"] == "nf4" and st["blocksize"] == 64 and st["dtype"] == "bfloat16"
    assert st["shape"] == [256, 128] and q.data.shape == [256 * 128 // 2, 1]
    assert np.from_dlpack(st["code"]).tolist() == pytest.approx(NF4, abs=0)
    mine = dequantize_nf4(q)
    got = bf16_to_f32(np.from_dlpack(store.get(name).as_uint8())).reshape(256, 128)
    # store.get rounds to bf16; the numpy reference stays in f32.
    assert np.allclose(mine, got, rtol=2**-8, atol=0)


def test_full_precision_params_stay_unquantized(hf):
    store = wmap.load(hf / "qwen3_moe", quant="nf4")
    norm = store["final_norm.weight"]
    assert isinstance(norm, wmap.Tensor) and norm.dtype == "bfloat16"
    assert store.stats()["quantized"] == 8


def test_offloaded_experts_come_through_get_and_prefetch(hf):
    store = wmap.load(hf / "qwen3_moe", quant="nf4", offload_budget=100_000)
    stats = store.stats()
    assert stats["offload_groups"] == 16 and stats["resident_bytes"] == 0
    with pytest.raises(wmap.WmapError) as e:
        store["layers.0.moe.experts.down"]
    assert e.value.code == "E0703"
    assert store.prefetch("layer=0/expert=1") is True
    v = store.get("layers.0.moe.experts.down[1]")
    assert v.shape == [128, 64] and v.dtype == "bfloat16"
    assert store.stats()["hits"] == 1
    with pytest.raises(wmap.WmapError) as e:
        store.prefetch("no-such-group")
    assert e.value.code == "E0703"


def test_progress_reaches_the_total(hf):
    seen = []
    wmap.load(hf / "llama", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0


def test_get_buffers_return_to_the_pool_when_arrays_are_gone(hf):
    store = wmap.load(hf / "qwen3_moe", quant="nf4")
    name = "layers.0.attention.qkv"
    a = np.from_dlpack(store.get(name).as_uint8())
    first = a.ctypes.data
    assert store.stats()["buffers_allocated"] == 1
    # While `a` lives its buffer is taken: a second get allocates another.
    b = np.from_dlpack(store.get(name).as_uint8())
    assert b.ctypes.data != first and store.stats()["buffers_allocated"] == 2
    del a, b
    c = np.from_dlpack(store.get(name).as_uint8())
    assert store.stats()["buffers_reused"] == 1


def test_keep_loads_named_targets_in_full_precision(hf):
    store = wmap.load(hf / "qwen3_moe", quant="nf4", keep=["layers.0.attention.qkv"])
    assert isinstance(store["layers.0.attention.qkv"], wmap.Tensor)
    assert isinstance(store["layers.1.attention.qkv"], wmap.Quantized)
    assert store.stats()["quantized"] == 7
    with pytest.raises(wmap.WmapError) as e:
        wmap.load(hf / "qwen3_moe", quant="nf4", keep=["no.such.target"])
    assert e.value.code == "E0802" and "no.such.target" in e.value.rendered


def test_progress_calls_come_in_increasing_order(hf):
    seen = []
    wmap.load(hf / "qwen3_moe", threads=4, progress=lambda done, total: seen.append(done))
    assert seen == sorted(seen) and len(seen) > 1
