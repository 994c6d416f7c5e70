"""MoE experts offloaded through the weights manager (`wmap.experts`) on the CPU path.

The host store runs the same Python logic as the GPU store (`OffloadedExperts`, the
re-fetching backward, the prefetch schedule), so training with a budget below the
experts' size must give the loss of the run whose budget holds every group, step for
step. Needs torch and transformers, not bitsandbytes (`quantize_linears=False`). The
GPU run of the same comparison is `examples/moe_offload_train.py`."""

import pytest

import wmap

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import wmap.torch as wt  # noqa: E402

GATE_UP = "layers.1.moe.experts.gate_up"


def offloaded(hf, budget):
    path = hf / "qwen3_moe"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))
    store = wt.load_into(model, path, quant="nf4", device="cpu", offload_budget=budget, quantize_linears=False)
    return model, store


def ids():
    return (torch.arange(48).reshape(2, 24) * 7 + 3) % 320


def norms_trainable(model):
    """Only the RMSNorm weights learn: their gradients pass through every layer's experts."""
    for name, p in model.named_parameters():
        p.requires_grad = "norm" in name
    return [p for p in model.parameters() if p.requires_grad]


def train(model, steps):
    model.train()
    opt = torch.optim.AdamW(norms_trainable(model), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids(), labels=ids()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_experts_become_offloaded_modules_served_by_get(hf):
    model, store = offloaded(hf, 20_000)
    experts = model.get_submodule("model.layers.1.mlp.experts")
    q = experts.gate_up_proj
    assert type(q).__name__ == "_OffloadedExperts" and list(q.shape) == [8, 128, 128] and len(q) == 8
    assert "gate_up_proj" not in dict(experts.named_parameters(recurse=False))
    assert q.groups == [f"layer=1/expert={e}" for e in range(8)]
    assert store.group_of(f"{GATE_UP}[3]") == "layer=1/expert=3"
    assert store.group_of("final_norm.weight") is None
    assert len(store.groups()) == 16
    want = torch.from_dlpack(wmap.load(hf / "qwen3_moe", quant="nf4").get(GATE_UP))
    for e in (0, 7):
        assert torch.equal(q[e], want[e]), e
    with pytest.raises(IndexError):
        q[8]
    with pytest.raises(wmap.WmapError) as err:
        store[GATE_UP]
    assert err.value.code == "E0703"


def test_a_budget_below_the_experts_trains_like_every_group_resident(hf):
    small, small_store = offloaded(hf, 20_000)
    big, big_store = offloaded(hf, 1 << 40)
    s = small_store.stats()
    assert s["budget"] < s["host_bytes"]  # below the experts' size: they must move
    a, b = train(small, 4), train(big, 4)
    assert a == b
    assert a[-1] < a[0]
    s, r = small_store.stats(), big_store.stats()
    assert s["misses"] > 0 and s["evictions"] > 0 and s["resident_bytes"] <= 20_000
    # The resident run copies each group once; the offloaded one again and again.
    assert r["bytes_moved"] == r["host_bytes"] and s["bytes_moved"] > 4 * s["host_bytes"]


def test_backward_fetches_the_experts_again_instead_of_keeping_them(hf):
    model, store = offloaded(hf, 20_000)
    norms_trainable(model)
    experts = model.get_submodule("model.layers.0.mlp.experts")
    loss = model(input_ids=ids(), labels=ids()).loss
    # The graph holds no fetched weight: every one was packed as (module, expert).
    assert len(experts._wmap_offload["refetch"].live) == 0
    gets = store.stats()["buffers_reused"] + store.stats()["buffers_allocated"]
    loss.backward()
    again = store.stats()["buffers_reused"] + store.stats()["buffers_allocated"] - gets
    assert again > 0
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    # The same model with the experts as plain bf16 parameters keeps them in the graph
    # and must get the same gradients.
    for layer in (0, 1):
        m = model.get_submodule(f"model.layers.{layer}.mlp.experts")
        for attr in ("gate_up_proj", "down_proj"):
            full = getattr(m, attr).dequantize()
            delattr(m, attr)
            m.register_parameter(attr, torch.nn.Parameter(full, requires_grad=False))
        m.forward = type(m).forward.__get__(m)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids(), labels=ids()).loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.grad, grads[n]), n


def test_linear_refetches_in_backward_and_matches_a_kept_weight(hf):
    model, store = offloaded(hf, 20_000)
    experts = model.get_submodule("model.layers.0.mlp.experts").down_proj
    x = torch.randn(5, 64, dtype=torch.bfloat16, requires_grad=True)
    y = experts.linear(x, 3)
    gets = store.stats()["buffers_reused"] + store.stats()["buffers_allocated"]
    y.sum().backward()
    assert store.stats()["buffers_reused"] + store.stats()["buffers_allocated"] == gets + 1
    w = experts.fetch(3)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.nn.functional.linear(x2, w)
    y2.sum().backward()
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)


def test_unload_and_prefetch_reach_the_manager(hf):
    _, store = offloaded(hf, 20_000)
    group = "layer=0/expert=1"
    assert store.prefetch(group) is True
    assert store.stats()["resident_bytes"] > 0
    assert store.unload(group) is True
    assert store.stats()["resident_bytes"] == 0
    with pytest.raises(wmap.WmapError) as err:
        store.unload("layer=9/expert=9")
    assert err.value.code == "E0703"


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    "flags",
    [
        ["--no-lora", "--dense-linears"],
        pytest.param(
            [],
            marks=pytest.mark.skipif(
                not (_has("peft") and _has("bitsandbytes")), reason="QLoRA needs peft and bitsandbytes"
            ),
        ),
    ],
    ids=["norms-dense", "qlora"],
)
def test_the_demo_runs_without_a_gpu_and_its_curves_agree(hf, flags):
    """examples/moe_offload_train.py on the CPU path: norms over bf16 projections (no peft,
    no bitsandbytes), and LoRA over Linear4bit where peft and bitsandbytes are present."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    # The wmap this test imported (installed, or a development tree), not the sources'.
    here = os.path.dirname(os.path.dirname(wmap.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(
        [sys.executable, str(root / "examples" / "moe_offload_train.py"), str(hf / "qwen3_moe"),
         "--device", "cpu", "--steps", "2", *flags],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "loss curves equal step for step: True" in p.stdout
    assert "offloaded " in p.stdout.splitlines()[-2]
