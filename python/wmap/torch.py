"""wmap for PyTorch and transformers: fill a model with wmap-loaded (NF4/FP4) weights.

    >>> from transformers import AutoConfig, AutoModelForCausalLM
    >>> import torch, wmap.torch
    >>> with torch.device("meta"):
    ...     model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    >>> wmap.torch.load_into(model, path, quant="nf4", device="cuda:0")

:func:`load_into` loads the checkpoint with wmap (quantizing on load), cuts every
runtime tensor back into the checkpoint tensors it was assembled from (a fused ``qkv``
into ``q_proj`` / ``k_proj`` / ``v_proj``, stacked experts into one tensor each), and
puts them into the model under their HF names: quantized params as
``bitsandbytes.nn.Linear4bit`` layers whose ``Params4bit`` carry wmap's packed codes and
a ``QuantState`` built from wmap's absmax (no re-quantization), everything else as
ordinary parameters. The result is the module tree ``from_pretrained(...,
quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))``
builds, for Linear layers; MoE experts held as fused 3-D parameters in transformers are
not Linear layers and get their dequantized bf16 weights.

Why the cut is exact: bitsandbytes quantizes each Linear weight on its own, in blocks of
``blocksize`` consecutive elements. A runtime tensor fused on dim 0 or stacked is the
row-major concatenation of its parts, so when every part's element count is a multiple
of the block size, the blocks of the fused tensor are the blocks of the parts, and
slicing codes and absmax gives bitsandbytes' own bytes. A part that does not align is
refused. Double quantization (``nf4-dq``) nests the absmax across the whole fused
tensor, which bitsandbytes does per layer, so it is refused here too.

Importing this module needs neither torch nor bitsandbytes; :func:`load_into` imports
them when called. Unproven without a GPU: the logits equality with ``from_pretrained``
and the bitsandbytes matmul on wmap's state (see README, "What is not proven here").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import wmap

__all__ = ["Part", "hf_parts", "load_into", "quant_state", "slice_quantized"]


@dataclass(frozen=True)
class Part:
    """A checkpoint tensor inside a runtime tensor: elements ``offset .. offset+numel``
    of the runtime tensor (row-major), with its own HF name and shape."""

    name: str
    offset: int
    numel: int
    shape: Tuple[int, ...]


def _walk(recipe: Dict[str, Any], at: List[int], out: List[Part]) -> bool:
    (kind, body), = recipe.items()
    if kind == "read":
        numel = 1
        for d in body["shape"]:
            numel *= d
        out.append(Part(body["tensor"], at[0], numel, tuple(body["shape"])))
        at[0] += numel
        return True
    if kind == "reshape":
        return _walk(body["source"], at, out)
    if kind == "stack" or (kind == "fuse" and body["dim"] == 0):
        return all(_walk(p, at, out) for p in body["parts"])
    return False


def hf_parts(target: Dict[str, Any]) -> Optional[List[Part]]:
    """The checkpoint tensors a plan target (``wmap.plan(...)["targets"][i]``) is the
    row-major concatenation of, or ``None`` when its recipe slices, transposes, fuses on
    another dim or is a tie. The same rule as the Rust export (``export::parts``)."""
    out: List[Part] = []
    return out if _walk(target["recipe"], [0], out) else None


def slice_quantized(q: "wmap.Quantized", part: Part) -> Dict[str, Any]:
    """The byte and block ranges of ``part`` inside a 4-bit quantized tensor ``q``:
    ``{"data": (start, end), "absmax": (start, end)}``. Raises ``ValueError`` when the
    part does not start and end on a block boundary, or when the absmax is nested."""
    st = q.quant_state
    if st is None:
        raise ValueError(f"{q.format} has no bitsandbytes quant state")
    if "state2" in st:
        raise ValueError("nf4-dq nests the absmax across the whole tensor; load with quant='nf4'")
    bs = st["blocksize"]
    if part.offset % bs or part.numel % bs:
        raise ValueError(f"{part.name}: {part.numel} elements at {part.offset} do not align to blocks of {bs}")
    return {
        "data": (part.offset // 2, (part.offset + part.numel) // 2),
        "absmax": (part.offset // bs, (part.offset + part.numel) // bs),
    }


def _torch_dtype(torch: Any, name: str) -> Any:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def quant_state(q: "wmap.Quantized", device: Any = "cpu", part: Optional[Part] = None) -> Any:
    """A ``bitsandbytes.functional.QuantState`` over wmap's absmax and table (of ``part``
    when given), as ``dequantize_4bit`` / ``matmul_4bit`` take it. The host tensors are
    taken with ``torch.from_dlpack`` (no copy) and then moved to ``device``."""
    import torch
    from bitsandbytes.functional import QuantState

    st = q.quant_state
    if st is None:
        raise ValueError(f"{q.format} has no bitsandbytes quant state")
    absmax = torch.from_dlpack(st["absmax"])
    shape = list(st["shape"])
    if part is not None:
        a0, a1 = slice_quantized(q, part)["absmax"]
        absmax, shape = absmax[a0:a1], list(part.shape)
    state2, offset = None, None
    if "state2" in st:
        s2 = st["state2"]
        state2 = QuantState(
            absmax=torch.from_dlpack(s2["absmax"]).to(device),
            code=torch.from_dlpack(s2["code"]).to(device),
            blocksize=s2["blocksize"],
            dtype=torch.float32,
        )
        offset = torch.from_dlpack(st["offset"]).to(device)
    return QuantState(
        absmax=absmax.to(device),
        shape=torch.Size(shape),
        code=torch.from_dlpack(st["code"]).to(device),
        blocksize=st["blocksize"],
        quant_type=st["quant_type"],
        dtype=_torch_dtype(torch, st["dtype"]),
        offset=offset,
        state2=state2,
    )


def _modules(model: Any) -> Dict[str, Any]:
    return dict(model.named_modules())


def _split(name: str) -> Tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def _iter_parts(plan: Dict[str, Any]) -> Iterator[Tuple[Dict[str, Any], Optional[List[Part]]]]:
    for t in plan["targets"]:
        if "tied" in t["recipe"]:
            continue
        yield t, hf_parts(t)


def load_into(
    model: Any,
    path: Any,
    quant: Optional[str] = "nf4",
    device: Any = "cuda",
    model_name: Optional[str] = None,
    progress: Any = None,
) -> "wmap.Store":
    """Fills ``model`` (a transformers model, typically built on the meta device) from
    the checkpoint folder ``path``, loading and quantizing with wmap. Quantizable Linear
    weights become ``bnb.nn.Linear4bit`` layers holding wmap's codes and state; other
    weights are copied to ``device``. Returns the wmap store (the host bytes stay owned
    by it). Tied weights are re-tied by ``model.tie_weights()``."""
    import torch

    if quant not in (None, "nf4", "fp4"):
        raise ValueError("load_into takes quant='nf4', 'fp4' or None (bitsandbytes' per-layer layouts)")
    store = wmap.load(path, model=model_name, quant=quant, progress=progress)
    plan = wmap.plan(path, model=model_name)
    modules = _modules(model)
    for target, parts in _iter_parts(plan):
        value = store[target["name"]]
        if parts is None:
            raise ValueError(f"`{target['name']}` slices or transposes its sources; it has no HF name to fill")
        for part in parts:
            module_name, attr = _split(part.name)
            module = modules.get(module_name)
            if module is None:
                raise KeyError(f"the model has no module `{module_name}` for `{part.name}`")
            if isinstance(value, wmap.Quantized) and isinstance(module, torch.nn.Linear) and attr == "weight":
                _put_linear4bit(model, modules, module_name, module, value, part, device)
            else:
                _put_dense(module, attr, value, part, device, store, target["name"])
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return store


def _put_dense(module: Any, attr: str, value: Any, part: Part, device: Any, store: Any, name: str) -> None:
    """A full-precision part; a quantized one outside a Linear (fused 3-D experts) goes
    in dequantized to bf16."""
    import torch

    if isinstance(value, wmap.Quantized):
        value = store.get(name)
    flat = torch.from_dlpack(value).reshape(-1)
    w = flat[part.offset : part.offset + part.numel].reshape(part.shape)
    old = getattr(module, attr)
    dtype = old.dtype if old is not None and old.dtype.is_floating_point else w.dtype
    setattr(module, attr, torch.nn.Parameter(w.to(device=device, dtype=dtype), requires_grad=False))


def _put_linear4bit(model: Any, modules: Dict[str, Any], name: str, linear: Any, q: Any, part: Part, device: Any) -> None:
    """Replaces ``linear`` by a ``bnb.nn.Linear4bit`` whose weight is wmap's packed codes
    for ``part`` with their quant state."""
    import bitsandbytes as bnb
    import torch

    r = slice_quantized(q, part)
    d0, d1 = r["data"]
    data = torch.from_dlpack(q.data)[d0:d1]
    state = quant_state(q, device=device, part=part)
    new = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=_torch_dtype(torch, q.dtype),
        quant_type=q.quant_state["quant_type"],
        quant_storage=torch.uint8,
        device="meta",
    )
    new.weight = bnb.nn.Params4bit(
        data.to(device),
        requires_grad=False,
        quant_state=state,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        module=new,
        bnb_quantized=True,
    )
    if linear.bias is not None and linear.bias.device.type != "meta":
        new.bias = torch.nn.Parameter(linear.bias.to(device), requires_grad=False)
    new.to(device)
    parent_name, _, child = name.rpartition(".")
    parent = modules[parent_name] if parent_name else model
    setattr(parent, child, new)
    modules[name] = new
