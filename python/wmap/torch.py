"""wmap for PyTorch and transformers: fill a model with wmap-loaded (NF4/FP4) weights.

    >>> from transformers import AutoConfig, AutoModelForCausalLM
    >>> import torch, wmap.torch
    >>> with torch.device("meta"):
    ...     model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    >>> wmap.torch.load_into(model, path, quant="nf4", device="cuda:0")

:func:`load_into` loads the checkpoint with wmap (quantizing on load), cuts every
runtime tensor back into the checkpoint tensors it was assembled from (a fused ``qkv``
into ``q_proj`` / ``k_proj`` / ``v_proj``), and puts them into the model under their HF
names: quantized params as ``bitsandbytes.nn.Linear4bit`` layers whose ``Params4bit``
carry wmap's packed codes and a ``QuantState`` built from wmap's absmax (no
re-quantization), everything else as ordinary parameters. The result is the module tree
``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4"))`` builds, with the same attributes (``is_loaded_in_4bit``,
``config.quantization_config``), in eval mode. Where the model holds stacked experts as
one 3-D parameter (transformers 5's ``experts.gate_up_proj`` / ``down_proj``, wmap's own
``[E, …]`` layout), the runtime tensor fills it whole: quantized, as an
:func:`Experts4bit` module that ``experts[e]`` dequantizes (transformers' bnb path leaves
these bf16; ``quantize_experts=False`` does too). With ``offload_budget``, the
experts stay in wmap's weights manager instead and are fetched per routed expert
(:mod:`wmap.experts`).

Why the cut is exact: bitsandbytes quantizes each Linear weight on its own, in blocks of
``blocksize`` consecutive elements. A runtime tensor fused on dim 0 or stacked is the
row-major concatenation of its parts, so when every part's element count is a multiple
of the block size, the blocks of the fused tensor are the blocks of the parts, and
slicing codes and absmax gives bitsandbytes' own bytes. A part that does not align is
refused. Double quantization (``nf4-dq``) nests the absmax across the whole fused
tensor, which bitsandbytes does per layer, so it is refused here too.

Importing this module needs neither torch nor bitsandbytes; :func:`load_into` imports
them when called. On the CPU (bitsandbytes' CPU backend) the logits equal
``from_pretrained``'s bit for bit (``python/tests/test_load_into.py``); the CUDA run is
``scripts/gpu_python.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import wmap

__all__ = ["Experts4bit", "Part", "Placement", "hf_parts", "load_into", "placements", "quant_state", "slice_quantized"]


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


@dataclass(frozen=True)
class Placement:
    """Where one plan target goes in a torch model: ``parts`` when each HF part names a
    module attribute of its own (``q_proj.weight``), else ``whole``: the runtime tensor
    fills one parameter of the same shape (``experts.gate_up_proj``, held as ``[E, …]``)."""

    target: Dict[str, Any]
    parts: List[Part]
    whole: Optional[Tuple[str, str]] = None

    @property
    def stacked(self) -> bool:
        """Whether the target fills a whole parameter that is not a Linear weight."""
        return self.whole is not None


def _split(name: str) -> Tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def _whole_param(modules: Dict[str, Any], target: Dict[str, Any], parts: List[Part]) -> Tuple[str, str]:
    """The parameter of the target's shape on the nearest existing ancestor module of its
    parts (transformers fuses ``experts.{e}.gate_proj`` / ``up_proj`` into one 3-D
    ``experts.gate_up_proj``, in the row-major order wmap stacks them)."""
    shape = tuple(target["shape"])
    prefix = _split(parts[0].name)[0]
    while prefix and prefix not in modules:
        prefix = _split(prefix)[0]
    if prefix not in modules:
        raise KeyError(f"the model has no module for `{parts[0].name}` (`{target['name']}`)")
    found = [n for n, p in modules[prefix].named_parameters(recurse=False) if tuple(p.shape) == shape]
    if len(found) != 1:
        raise KeyError(
            f"`{target['name']}` {list(shape)}: module `{prefix}` has {len(found)} parameters of that shape"
            f" (`{parts[0].name}` and {len(parts) - 1} more name none of its modules)"
        )
    return prefix, found[0]


def _renamer(model: Any) -> Any:
    """Checkpoint key → the model's key, by the ``WeightRenaming`` rules transformers
    applies when loading (``block_sparse_moe`` → ``mlp`` for Mixtral in transformers 5);
    the identity without them. Its ``WeightConverter``s (the experts' fusing) are not
    applied: :func:`placements` finds the fused parameter by shape instead."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:
        return lambda key: key
    try:
        renamings = [t for t in get_model_conversion_mapping(model) if not isinstance(t, WeightConverter)]
    except Exception:  # noqa: BLE001 (a model transformers has no mapping for: names as on disk)
        return lambda key: key
    return lambda key: rename_source_key(key, renamings, [])[0]


def placements(model: Any, plan: Dict[str, Any]) -> List[Placement]:
    """Where each (untied) target of ``plan`` goes in ``model``, with its parts named as
    the model names them. Raises ``ValueError`` for a target whose recipe slices or
    transposes (it has no HF tensor to fill) and ``KeyError`` when the model has no
    place for it."""
    modules = dict(model.named_modules())
    rename = _renamer(model)
    out = []
    for t in plan["targets"]:
        if "tied" in t["recipe"]:
            continue
        parts = hf_parts(t)
        if parts is None:
            raise ValueError(f"`{t['name']}` slices or transposes its sources; it has no HF name to fill")
        parts = [Part(rename(p.name), p.offset, p.numel, p.shape) for p in parts]
        own = all(_split(p.name)[0] in modules for p in parts)
        out.append(Placement(t, parts) if own else Placement(t, parts, _whole_param(modules, t, parts)))
    return out


def load_into(
    model: Any,
    path: Any,
    quant: Optional[str] = "nf4",
    device: Any = "cuda",
    model_name: Optional[str] = None,
    progress: Any = None,
    quantize_experts: bool = True,
    via: Optional[str] = None,
    offload_budget: Optional[int] = None,
    offload_policy: str = "order",
    quantize_linears: bool = True,
) -> Any:
    """Fills ``model`` (a transformers model, typically built on the meta device) from
    the checkpoint folder ``path``, loading and quantizing with wmap. Quantizable Linear
    weights become ``bnb.nn.Linear4bit`` layers holding wmap's codes and state; stacked
    experts held as 3-D parameters become :func:`Experts4bit` modules (dequantized one
    expert at a time; the model is switched to the ``eager`` experts implementation,
    which indexes them), or stay bf16 with ``quantize_experts=False`` (wmap then does
    not quantize them at all); other weights go to ``device`` in the model's dtype.
    Non-persistent buffers (rotary tables) are recomputed on ``device``, and the model
    is put in eval mode, as ``from_pretrained`` leaves it.

    ``via``: ``"device"`` loads with wmap straight onto the GPU (a CUDA build of the
    package; tensors are then used in place, no copy), ``"host"`` loads in host memory
    and copies; by default ``"device"`` when ``device`` is CUDA and
    :func:`wmap.cuda_available`. Returns the wmap store, which owns the bytes the model's
    tensors may view. Raises ``ValueError`` if anything is left on the meta device.

    ``offload_budget`` (bytes): the stacked experts stay in wmap's weights manager (page-
    locked host memory on the GPU path) and become :func:`wmap.experts.OffloadedExperts`
    modules that fetch each routed expert with ``store.get`` within that device budget,
    re-fetch it in backward instead of keeping it, and prefetch around each layer (see
    :mod:`wmap.experts`; ``offload_policy``: ``"order"`` or ``"lru"``).
    ``quantize_linears=False`` loads the other quantizable weights in full precision
    (plain ``Linear`` layers, no bitsandbytes needed), e.g. to train on the CPU with only
    the experts quantized and offloaded."""
    if quant not in (None, "nf4", "fp4"):
        raise ValueError("load_into takes quant='nf4', 'fp4' or None (bitsandbytes' per-layer layouts)")
    device = str(device)
    if via is None:
        via = "device" if device.startswith("cuda") and wmap.cuda_available() else "host"
    if via not in ("device", "host"):
        raise ValueError("via must be 'device' or 'host'")
    plan = wmap.plan(path, model=model_name)
    places = placements(model, plan)
    keep = [
        p.target["name"]
        for p in places
        if p.target["quantizable"] and (not quantize_experts if p.stacked else not quantize_linears)
    ]
    load_device = device if via == "device" else "cpu"
    store = wmap.load(
        path,
        model=model_name,
        quant=quant,
        device=load_device,
        progress=progress,
        keep=keep,
        offload_budget=offload_budget,
        offload_policy=offload_policy,
    )
    schedule = None
    if offload_budget is not None:
        from .experts import Schedule

        stats = store.stats()
        schedule = Schedule(store, free=stats.get("budget", offload_budget) < stats.get("host_bytes", 0))
    quantized_experts = 0
    for place in places:
        quantized_experts += _fill(model, place, store, device, schedule)
    if quant is not None and quantize_linears:
        _mark_quantized(model, quant)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if quantized_experts and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    _materialize_buffers(model, device)
    _refuse_meta(model)
    # from_pretrained returns a model in eval mode; a training loop calls model.train().
    model.eval()
    return store


def _fill(model: Any, place: Placement, store: Any, device: str, schedule: Any = None) -> int:
    """Puts one target into ``model``; returns 1 when it became an :func:`Experts4bit`
    or, with a ``schedule`` (an offloaded load), an ``OffloadedExperts``."""
    import torch

    name = place.target["name"]
    modules = dict(model.named_modules())
    if place.whole is not None and schedule is not None and store.group_of(f"{name}[0]") is not None:
        from .experts import offload_experts

        module_name, attr = place.whole
        offload_experts(modules[module_name], attr, store, name, place.target["shape"], device, schedule)
        _follow_input_dtype(modules[module_name])
        return 1
    value = store[name]
    if place.whole is not None:
        module_name, attr = place.whole
        if isinstance(value, wmap.Quantized):
            _replace(model, module_name, attr, _experts4bit(value, device))
            _follow_input_dtype(modules[module_name])
            return 1
        _put_dense(modules[module_name], attr, value, Part(name, 0, _numel(place.target["shape"]), tuple(place.target["shape"])), device)
        return 0
    for part in place.parts:
        module_name, attr = _split(part.name)
        module = modules[module_name]
        if isinstance(value, wmap.Quantized) and isinstance(module, torch.nn.Linear) and attr == "weight":
            _put_linear4bit(model, module_name, module, value, part, device)
            modules[module_name] = _module(model, module_name)
        else:
            full = _dequantized(store, name, value, device) if isinstance(value, wmap.Quantized) else value
            _put_dense(module, attr, full, part, device)
    return 0


def _numel(shape: List[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _module(model: Any, name: str) -> Any:
    return model.get_submodule(name) if name else model


def _replace(model: Any, module_name: str, attr: str, new: Any) -> None:
    """Replaces parameter (or child) ``attr`` of ``module_name`` by the module ``new``."""
    module = _module(model, module_name)
    if attr in module._parameters:
        del module._parameters[attr]
    setattr(module, attr, new)


def _follow_input_dtype(parent: Any) -> None:
    """Makes the :func:`Experts4bit` (or ``OffloadedExperts``) children of ``parent`` return the dtype of the
    hidden states ``parent`` is called with, as ``Linear4bit`` computes in its input's
    dtype (after peft's ``prepare_model_for_kbit_training`` the activations are fp32)."""
    import torch

    if getattr(parent, "_wmap_follows_input_dtype", False):
        return

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            for child in module.children():
                if hasattr(child, "compute_dtype"):
                    child.compute_dtype = x.dtype

    parent.register_forward_pre_hook(hook, with_kwargs=True)
    parent._wmap_follows_input_dtype = True


def _dequantized(store: Any, name: str, q: Any, device: str) -> Any:
    """A quantized target in bf16: the weights manager's ``get`` for a host store, the
    bitsandbytes kernel over the device codes for a device store."""
    import torch

    if isinstance(store, wmap.Store):
        return store.get(name)
    import bitsandbytes.functional as F

    return F.dequantize_4bit(torch.from_dlpack(q.data), quant_state(q, device=device))


def _put_dense(module: Any, attr: str, value: Any, part: Part, device: str) -> None:
    """A full-precision part (wmap tensor or torch tensor), in the dtype the model
    declared for it."""
    import torch

    flat = (value if isinstance(value, torch.Tensor) else torch.from_dlpack(value)).reshape(-1)
    w = flat[part.offset : part.offset + part.numel].reshape(part.shape)
    old = getattr(module, attr)
    dtype = old.dtype if old is not None and old.dtype.is_floating_point else w.dtype
    setattr(module, attr, torch.nn.Parameter(w.to(device=device, dtype=dtype), requires_grad=False))


def _put_linear4bit(model: Any, name: str, linear: Any, q: Any, part: Part, device: str) -> None:
    """Replaces ``linear`` by a ``bnb.nn.Linear4bit`` whose weight is wmap's packed codes
    for ``part`` with their quant state, built as transformers' ``replace_with_bnb_linear``
    builds it (no double quant: wmap's nested absmax is refused above)."""
    import bitsandbytes as bnb
    import torch

    d0, d1 = slice_quantized(q, part)["data"]
    data = torch.from_dlpack(q.data)[d0:d1]
    state = quant_state(q, device=device, part=part)
    new = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=_torch_dtype(torch, q.dtype),
        compress_statistics=False,
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
    _replace(model, *_split(name), new)


def _mark_quantized(model: Any, quant: str) -> None:
    """The attributes ``from_pretrained`` with ``BitsAndBytesConfig(load_in_4bit=True)``
    sets, which peft reads to wrap ``Linear4bit`` layers with its 4-bit LoRA layer and
    ``save_pretrained`` to write the quantization config."""
    import torch

    model.is_quantized = True
    model.is_loaded_in_4bit = True
    model.quantization_method = "bitsandbytes"
    config = getattr(model, "config", None)
    if config is None:
        return
    try:
        from transformers import BitsAndBytesConfig
    except ImportError:
        return
    dtype = getattr(model, "dtype", torch.bfloat16)
    config.quantization_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_compute_dtype=dtype
    )


def _materialize_buffers(model: Any, device: str) -> None:
    """Buffers still on the meta device are not in the checkpoint (rotary tables, Gemma's
    ``embed_scale``): allocated on ``device`` and recomputed by the model's own
    ``_init_weights``, as ``from_pretrained`` does. The loaded parameters are marked
    ``_is_hf_initialized`` first, which transformers' init functions respect; a module's
    parameters are compared before and after all the same, and a change is an error."""
    import torch

    for p in model.parameters():
        p._is_hf_initialized = True
    for name, module in model.named_modules():
        metas = [k for k, b in module._buffers.items() if b is not None and b.is_meta]
        if not metas:
            continue
        if not hasattr(model, "_init_weights"):
            raise ValueError(f"cannot recompute the buffers {metas} of `{name}`")
        for k in metas:
            module._buffers[k] = torch.empty_like(module._buffers[k], device=device)
        before = [(p, p.detach().clone()) for p in module.parameters(recurse=False) if not p.is_meta]
        model._init_weights(module)
        if any(not torch.equal(p.detach(), old) for p, old in before):
            raise ValueError(f"recomputing the buffers {metas} of `{name}` changed its loaded weights")


def _refuse_meta(model: Any) -> None:
    left = [n for n, p in model.named_parameters() if p.is_meta]
    left += [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise ValueError(f"not filled from the checkpoint: {', '.join(left[:8])}{' …' if len(left) > 8 else ''}")


_EXPERTS4BIT: Any = None


def Experts4bit(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (a class, made lazily)
    """``Experts4bit(codes, absmax, code, shape, blocksize, quant_type, dtype)``: stacked
    experts ``[E, R, C]`` in 4 bits, a ``torch.nn.Module`` that ``experts[e]`` dequantizes
    to ``[R, C]`` with bitsandbytes (so the eager experts forward runs unchanged). Each
    expert must span whole blocks. The class is built on first use, so that importing
    ``wmap.torch`` needs no torch. ``compute_dtype`` (default ``None``: the quantized
    param's dtype) is the dtype ``experts[e]`` is returned in."""
    global _EXPERTS4BIT
    if _EXPERTS4BIT is None:
        _EXPERTS4BIT = _experts4bit_class()
    return _EXPERTS4BIT(*args, **kwargs)


def _experts4bit_class() -> Any:
    import torch

    class _Experts4bit(torch.nn.Module):
        def __init__(self, codes, absmax, code, shape, blocksize, quant_type, dtype):
            super().__init__()
            e, r, c = (int(d) for d in shape)
            if (r * c) % blocksize:
                raise ValueError(f"an expert of {r}x{c} does not span whole blocks of {blocksize}")
            self.register_buffer("codes", codes.reshape(-1, 1))
            self.register_buffer("absmax", absmax.reshape(-1))
            self.register_buffer("code", code)
            self.shape = torch.Size((e, r, c))
            self.blocksize, self.quant_type, self.dtype = blocksize, quant_type, dtype
            # The dtype experts[e] is returned in; set from the caller's input by
            # _follow_input_dtype (None: the dequantized dtype).
            self.compute_dtype = None

        def __len__(self) -> int:
            return self.shape[0]

        def __getitem__(self, e: Any) -> Any:
            import bitsandbytes.functional as F
            from bitsandbytes.functional import QuantState

            e = int(e)
            if not 0 <= e < self.shape[0]:
                raise IndexError(e)
            n = self.shape[1] * self.shape[2]
            state = QuantState(
                absmax=self.absmax[e * n // self.blocksize : (e + 1) * n // self.blocksize],
                shape=self.shape[1:],
                code=self.code,
                blocksize=self.blocksize,
                quant_type=self.quant_type,
                dtype=self.dtype,
            )
            w = F.dequantize_4bit(self.codes[e * n // 2 : (e + 1) * n // 2], state)
            return w if self.compute_dtype in (None, w.dtype) else w.to(self.compute_dtype)

        def dequantize(self) -> Any:
            """All experts, ``[E, R, C]``."""
            return torch.stack([self[e] for e in range(self.shape[0])])

        def extra_repr(self) -> str:
            return f"shape={list(self.shape)}, quant_type={self.quant_type}, blocksize={self.blocksize}"

    return _Experts4bit


def _experts4bit(q: Any, device: str) -> Any:
    """wmap's quantized stacked experts as an :func:`Experts4bit` on ``device``."""
    import torch

    st = q.quant_state
    if st is None or "state2" in st:
        raise ValueError(f"{q.format}: stacked experts need quant='nf4' or 'fp4' (no nested absmax)")
    return Experts4bit(
        torch.from_dlpack(q.data).to(device),
        torch.from_dlpack(st["absmax"]).to(device),
        torch.from_dlpack(st["code"]).to(device),
        st["shape"],
        st["blocksize"],
        st["quant_type"],
        _torch_dtype(torch, st["dtype"]),
    )
