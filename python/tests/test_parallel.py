"""Tensor- and expert-parallel loads: each rank's tensors are its slices of the whole load."""

import numpy as np
import pytest

import wmap


def whole_and_ranks(fixture, hf, **sizes):
    whole = wmap.load(hf / fixture)
    tp, ep = sizes.get("tp_size", 1), sizes.get("ep_size", 1)
    ranks = {
        (t, e): wmap.load(hf / fixture, tp_rank=t, ep_rank=e, **sizes)
        for t in range(tp)
        for e in range(ep)
    }
    return whole, ranks


def array(t):
    return np.from_dlpack(t.as_uint8()).reshape(*t.shape, -1)


def test_column_and_row_shards_concatenate_to_the_whole(hf):
    whole, ranks = whole_and_ranks("llama", hf, tp_size=2)
    # Row-parallel `out` splits its input heads (dim 1); `down` its width.
    for name in ["layers.0.attention.out", "layers.1.mlp.down"]:
        parts = [array(ranks[(r, 0)][name]) for r in range(2)]
        assert np.array_equal(np.concatenate(parts, axis=1), array(whole[name])), name
    # Column-parallel `embed` splits the vocabulary (dim 0); norms are replicated.
    parts = [array(ranks[(r, 0)]["embed"]) for r in range(2)]
    assert np.array_equal(np.concatenate(parts, axis=0), array(whole["embed"]))
    for r in range(2):
        norm = "layers.0.input_norm.weight"
        assert np.array_equal(array(ranks[(r, 0)][norm]), array(whole[norm]))


def test_fused_qkv_shards_per_part(hf):
    # 4 query heads, 2 kv heads of 32 rows: rank r holds [q_r; k_r; v_r].
    whole, ranks = whole_and_ranks("llama", hf, tp_size=2)
    qkv = array(whole["layers.0.attention.qkv"])
    q, k, v = qkv[:128], qkv[128:192], qkv[192:]
    for r in range(2):
        want = np.concatenate([q[64 * r : 64 * (r + 1)], k[32 * r : 32 * (r + 1)], v[32 * r : 32 * (r + 1)]])
        assert np.array_equal(array(ranks[(r, 0)]["layers.0.attention.qkv"]), want)


def test_experts_split_into_blocks(hf):
    whole, ranks = whole_and_ranks("mixtral", hf, ep_size=2)
    name = "layers.0.moe.experts.down"
    parts = [array(ranks[(0, e)][name]) for e in range(2)]
    assert np.array_equal(np.concatenate(parts, axis=0), array(whole[name]))


def test_sizes_that_do_not_divide_are_refused(hf):
    with pytest.raises(wmap.WmapError, match="E0450"):
        wmap.load(hf / "llama", tp_rank=0, tp_size=3)
    with pytest.raises(wmap.WmapError, match="E0540"):
        wmap.load(hf / "llama", tp_rank=2, tp_size=2)
