"""`wmap.torch.load_into` against transformers + bitsandbytes on the CPU.

These need torch, transformers and bitsandbytes (with its CPU backend); they are skipped
where those are missing (CI's venv has numpy and pytest only). The GPU run of the same
comparisons is `scripts/gpu_python.py`."""

import numpy as np
import pytest

import wmap

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")

import wmap.torch as wt  # noqa: E402


def meta_model(path):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))


def reference(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        device_map="cpu",
        quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
    )


def no_cpu_repack(model):
    """bitsandbytes' CPU backend repacks a Linear4bit's weight at its first eval forward
    and fails for layers narrower than a block (the small fixtures' 32-wide ones); the
    plain dequantize path is what both sides then run."""
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    return model


def ids(vocab):
    return (torch.arange(48).reshape(1, 48) * 7 + 3) % vocab


def test_llama_equals_from_pretrained_bit_for_bit(hf):
    ours = meta_model(hf / "llama")
    wt.load_into(ours, hf / "llama", quant="nf4", device="cpu")
    ref = reference(hf / "llama")
    a, b = dict(ours.named_modules()), dict(ref.named_modules())
    assert {n: type(m) for n, m in a.items()} == {n: type(m) for n, m in b.items()}
    linears = [n for n, m in b.items() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 14
    for n in linears:
        assert torch.equal(a[n].weight.data, b[n].weight.data), n
        assert torch.equal(a[n].weight.quant_state.absmax, b[n].weight.quant_state.absmax), n
    assert not ours.training
    with torch.no_grad():
        assert torch.equal(ours(ids(320)).logits, ref(ids(320)).logits)


@pytest.mark.parametrize("name", ["mistral", "qwen2", "phi3", "gemma2", "mixtral", "olmoe", "starcoder2"])
def test_other_families_equal_from_pretrained(hf, name):
    # gemma2: a meta `embed_scale` buffer recomputed; mixtral: `block_sparse_moe` renamed
    # to `mlp` by transformers' own renaming rules; phi3: fused qkv on disk.
    ours = meta_model(hf / name)
    wt.load_into(ours, hf / name, quant="nf4", device="cpu", quantize_experts=False)
    ref = no_cpu_repack(reference(hf / name))
    no_cpu_repack(ours)
    a, b = dict(ours.named_modules()), dict(ref.named_modules())
    assert {n: type(m) for n, m in a.items()} == {n: type(m) for n, m in b.items()}
    for n, m in b.items():
        if isinstance(m, bnb.nn.Linear4bit):
            assert torch.equal(a[n].weight.data, m.weight.data), n
    with torch.no_grad():
        vocab = ours.config.vocab_size
        assert torch.equal(ours(ids(vocab)).logits, ref(ids(vocab)).logits)


def test_rotary_buffers_are_recomputed_off_meta(hf):
    ours = meta_model(hf / "llama")
    wt.load_into(ours, hf / "llama", quant="nf4", device="cpu")
    fresh = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(hf / "llama"))
    got = dict(ours.named_buffers())
    for name, want in fresh.named_buffers():
        assert got[name].device.type == "cpu" and torch.equal(got[name], want), name


def test_moe_experts_become_experts4bit_that_dequantize_like_the_store(hf):
    ours = meta_model(hf / "qwen3_moe")
    store = wt.load_into(ours, hf / "qwen3_moe", quant="nf4", device="cpu")
    experts = ours.get_submodule("model.layers.1.mlp.experts")
    q = experts.gate_up_proj
    assert type(q).__name__ == "_Experts4bit" and list(q.shape) == [8, 128, 128] and len(q) == 8
    assert "gate_up_proj" not in dict(experts.named_parameters(recurse=False))
    full = torch.from_dlpack(store.get("layers.1.moe.experts.gate_up"))
    for e in (0, 7):
        assert torch.equal(q[e], full[e]), e
    with pytest.raises(IndexError):
        q[8]
    assert ours.config._experts_implementation == "eager"
    with torch.no_grad():
        out = ours(ids(320)).logits
    assert out.shape == (1, 48, 320) and torch.isfinite(out).all()


def test_moe_experts_stay_bf16_and_unquantized_when_asked(hf):
    ours = meta_model(hf / "qwen3_moe")
    store = wt.load_into(ours, hf / "qwen3_moe", quant="nf4", device="cpu", quantize_experts=False)
    p = ours.get_parameter("model.layers.0.mlp.experts.down_proj")
    assert p.dtype == torch.bfloat16 and list(p.shape) == [8, 128, 64]
    assert isinstance(store["layers.0.moe.experts.down"], wmap.Tensor)
    raw = wmap.load(hf / "qwen3_moe")["layers.0.moe.experts.down"]
    assert torch.equal(p.data, torch.from_dlpack(raw))
    assert store.stats()["quantized"] == 4  # the attention projections and nothing else
    ref = reference(hf / "qwen3_moe")
    with torch.no_grad():
        assert torch.equal(ours(ids(320)).logits, ref(ids(320)).logits)


def test_a_model_without_the_checkpoints_modules_is_refused(hf):
    ours = meta_model(hf / "llama")
    with pytest.raises(KeyError, match="qwen3|experts|module"):
        wt.load_into(ours, hf / "qwen3_moe", quant="nf4", device="cpu")
