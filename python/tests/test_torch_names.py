"""The name mapping `wmap.torch.load_into` relies on, checked on the CPU (no torch)."""

import numpy as np
import pytest

import wmap
import wmap.torch as wt


def test_fused_qkv_cuts_back_into_hf_projections(hf):
    plan = wmap.plan(hf / "qwen3_moe")
    qkv = next(t for t in plan["targets"] if t["name"] == "layers.0.attention.qkv")
    parts = wt.hf_parts(qkv)
    assert [(p.name, p.offset, p.numel, p.shape) for p in parts] == [
        ("model.layers.0.self_attn.q_proj.weight", 0, 128 * 128, (128, 128)),
        ("model.layers.0.self_attn.k_proj.weight", 128 * 128, 64 * 128, (64, 128)),
        ("model.layers.0.self_attn.v_proj.weight", 192 * 128, 64 * 128, (64, 128)),
    ]


def test_every_checkpoint_tensor_is_filled_once(hf):
    # Each HF tensor the checkpoint holds is covered by exactly one part of one target
    # (ties excluded): the parts are what load_into puts into the model.
    plan = wmap.plan(hf / "qwen3_moe")
    names = []
    for t in plan["targets"]:
        if "tied" in t["recipe"]:
            continue
        parts = wt.hf_parts(t)
        assert parts is not None, t["name"]
        assert sum(p.numel for p in parts) == int(np.prod(t["shape"])), t["name"]
        names += [p.name for p in parts]
    assert len(names) == len(set(names))
    header_names = {
        f["tensor"] for f in _reads(plan)
    }
    assert set(names) == header_names


def _reads(plan):
    def walk(r):
        (k, b), = r.items()
        if k == "read":
            yield b
        for p in b.get("parts", []):
            yield from walk(p)
        if "source" in b:
            yield from walk(b["source"])

    for t in plan["targets"]:
        yield from walk(t["recipe"])


def test_sliced_codes_equal_the_parts_quantized_alone(hf, tmp_path):
    # bitsandbytes quantizes each projection alone; wmap quantized the fused qkv. On
    # block boundaries the codes and absmax of a slice are the part's own.
    store = wmap.load(hf / "qwen3_moe", quant="nf4")
    plan = wmap.plan(hf / "qwen3_moe")
    qkv = next(t for t in plan["targets"] if t["name"] == "layers.0.attention.qkv")
    q = store["layers.0.attention.qkv"]
    data = np.from_dlpack(q.data).reshape(-1)
    absmax = np.from_dlpack(q.quant_state["absmax"])
    raw = np.from_dlpack(wmap.load(hf / "qwen3_moe")["layers.0.attention.qkv"].as_uint8())
    f32 = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    for part in wt.hf_parts(qkv):
        r = wt.slice_quantized(q, part)
        a0, a1 = r["absmax"]
        blocks = f32[part.offset : part.offset + part.numel].reshape(-1, 64)
        assert np.array_equal(absmax[a0:a1], np.abs(blocks).max(axis=1)), part.name
        assert data[slice(*r["data"])].size == part.numel // 2


def test_misaligned_parts_and_nested_absmax_are_refused(hf):
    q = wmap.load(hf / "qwen3_moe", quant="nf4")["layers.0.attention.qkv"]
    with pytest.raises(ValueError):
        wt.slice_quantized(q, wt.Part("x", 32, 64, (64,)))
    dq = wmap.load(hf / "qwen3_moe", quant="nf4-dq")["layers.0.attention.qkv"]
    with pytest.raises(ValueError):
        wt.slice_quantized(dq, wt.Part("x", 0, 64, (64,)))
