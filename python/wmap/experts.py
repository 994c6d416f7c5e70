"""MoE experts served by wmap's weights manager: fetched per routed expert, never held.

:func:`offload_experts` replaces a stacked experts parameter (transformers 5's
``experts.gate_up_proj`` / ``down_proj``, ``[E, R, C]``) by an :func:`OffloadedExperts`
module whose ``experts[e]`` is ``store.get(f"{name}[{e}]")``: expert ``e`` dequantized to
bfloat16 in a pooled buffer, its offload group brought to the device first within the
store's budget. So the eager experts forward (``F.linear(x, self.gate_up_proj[e])``)
runs unchanged, as over :func:`wmap.torch.Experts4bit`.

Backward does not keep the weights: the experts module's forward runs under
``torch.autograd.graph.saved_tensors_hooks`` that pack a saved tensor which is (a view
of) a fetched expert weight as ``(module, e, shape, stride, offset)`` and fetch it again
when backward needs it. The experts are frozen, so activations' gradients flow through
them and nothing else does; the re-fetched weight equals the first (same bytes, same
dequantization), so the gradients equal those of a run that kept it. A runtime with its
own expert loop can call ``experts.linear(x, e)`` instead: an autograd Function that
saves only ``e`` and fetches the weight again in its backward.

A :class:`Schedule` shared by all layers prefetches around each layer: at a layer's
forward, the groups of the experts the router picked; after it, the next layer's groups
its router picked last time; before a layer's backward, its own groups and the previous
layer's. When the budget cannot hold every group, a layer's groups are unloaded once
its forward (and later its backward) is done, which leaves room for those prefetches.

Works on both stores: a device store (``wmap.load(device="cuda:N", offload_budget=B)``,
a CUDA build) hands out device tensors; the host store (``device="cpu"``) hands out host
tensors, copied to the model's device when that is not the CPU. Importing this module
needs no torch.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional

__all__ = ["OffloadedExperts", "Schedule", "offload_experts"]

_CLASS: Any = None


def OffloadedExperts(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (a class, made lazily)
    """``OffloadedExperts(store, name, shape, groups, device, refetch)``: the stacked
    param ``name`` (``[E, R, C]``, offloaded per expert) as a ``torch.nn.Module`` whose
    ``experts[e]`` fetches expert ``e`` through ``store.get``. ``compute_dtype`` (default
    ``None``: bfloat16, what ``get`` returns) is the dtype ``experts[e]`` is returned in.
    Built on first use, so that importing this module needs no torch."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _offloaded_class()
    return _CLASS(*args, **kwargs)


def _offloaded_class() -> Any:
    import torch

    class _OffloadedExperts(torch.nn.Module):
        def __init__(self, store, name, shape, groups, device, refetch):
            super().__init__()
            self.store, self.name = store, name
            self.shape = torch.Size(int(d) for d in shape)
            self.groups: List[str] = list(groups)
            self.device = torch.device(device)
            self.refetch = refetch
            self.compute_dtype = None

        def __len__(self) -> int:
            return self.shape[0]

        def fetch(self, e: int, dtype: Any = None) -> Any:
            """Expert ``e`` from the store, on the model's device, in ``dtype``."""
            w = torch.from_dlpack(self.store.get(f"{self.name}[{e}]"))
            if w.device != self.device:
                w = w.to(self.device)
            return w if dtype in (None, w.dtype) else w.to(dtype)

        def __getitem__(self, e: Any) -> Any:
            e = int(e)
            if not 0 <= e < self.shape[0]:
                raise IndexError(e)
            w = self.fetch(e, self.compute_dtype)
            self.refetch.register(w, self, e)
            return w

        def linear(self, x: Any, e: Any) -> Any:
            """``x @ experts[e].T`` through an autograd Function that keeps only ``e``
            and fetches the weight again in backward, for a runtime that writes its own
            expert loop (the eager forward of transformers indexes ``experts[e]``
            instead, and the saved-tensor hooks do the same for it)."""
            return _expert_linear().apply(x, self, int(e))

        def dequantize(self) -> Any:
            """All experts, ``[E, R, C]`` (a copy)."""
            return torch.stack([self.fetch(e, self.compute_dtype) for e in range(self.shape[0])])

        def extra_repr(self) -> str:
            return f"name={self.name}, shape={list(self.shape)}, offloaded per expert"

    return _OffloadedExperts


_LINEAR: Any = None


def _expert_linear() -> Any:
    """The autograd Function of ``OffloadedExperts.linear``, built on first use."""
    global _LINEAR
    if _LINEAR is not None:
        return _LINEAR
    import torch

    class ExpertLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, experts: Any, e: int) -> Any:
            ctx.experts, ctx.e = experts, e
            return torch.nn.functional.linear(x, experts.fetch(e, x.dtype))

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            # The experts are frozen: only the input's gradient, with the weight fetched
            # again rather than kept since the forward.
            w = ctx.experts.fetch(ctx.e, grad.dtype)
            return grad @ w, None, None

    _LINEAR = ExpertLinear
    return _LINEAR


class _Saved:
    """A saved tensor that was a view of expert ``e``'s fetched weight."""

    __slots__ = ("experts", "e", "dtype", "shape", "stride", "offset")

    def __init__(self, experts: Any, e: int, dtype: Any, t: Any) -> None:
        self.experts, self.e, self.dtype = experts, e, dtype
        self.shape, self.stride, self.offset = t.shape, t.stride(), t.storage_offset()


class Refetch:
    """The saved-tensor hooks of one experts module. A fetched weight is registered by
    the address of its storage while it lives (a weak reference: once it is gone, the
    address may hold anything else, and is no longer matched)."""

    def __init__(self) -> None:
        self.live: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()

    def register(self, w: Any, experts: Any, e: int) -> None:
        w._wmap_expert = (experts, e)
        self.live[w.untyped_storage().data_ptr()] = w

    def pack(self, t: Any) -> Any:
        if t.numel() == 0 or t.requires_grad or not self.live:
            return t
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (a subclass)
            return t
        w = self.live.get(ptr)
        if w is None or w.untyped_storage().data_ptr() != ptr:
            return t
        experts, e = w._wmap_expert
        return _Saved(experts, e, w.dtype, t)

    def unpack(self, x: Any) -> Any:
        if not isinstance(x, _Saved):
            return x
        w = x.experts.fetch(x.e, x.dtype)
        return w.as_strided(x.shape, x.stride, x.offset)


class Schedule:
    """Prefetches and unloads the experts' groups around each MoE layer (module docs).
    ``groups[layer][e]`` is expert ``e``'s group in that layer; ``free`` unloads a
    layer's groups after use (when the budget cannot hold them all)."""

    def __init__(self, store: Any, free: bool) -> None:
        self.store, self.free = store, free
        self.groups: List[List[str]] = []
        self.routed: Dict[int, List[int]] = {}

    def add(self, groups: List[str]) -> int:
        """Appends a layer (in forward order); returns its index."""
        self.groups.append(list(groups))
        return len(self.groups) - 1

    def _prefetch(self, layer: int, experts: Optional[List[int]]) -> None:
        if not 0 <= layer < len(self.groups):
            return
        for e in experts or []:
            if not self.store.prefetch(self.groups[layer][e]):
                break  # no room without evicting a group in use: the rest come on demand

    def _unload(self, layer: int) -> None:
        if self.free and 0 <= layer < len(self.groups):
            for e in self.routed.get(layer, []):
                self.store.unload(self.groups[layer][e])

    def before(self, layer: int, routing: Any) -> None:
        """At a layer's forward: its routed experts' groups start copying."""
        if routing is None:
            return
        n = len(self.groups[layer])
        experts = sorted({int(e) for e in routing.reshape(-1).tolist() if 0 <= int(e) < n})
        self.routed[layer] = experts
        self._prefetch(layer, experts)

    def after(self, layer: int, out: Any) -> None:
        """After a layer's forward: free its groups, start the next layer's, and arrange
        the same before its backward."""
        self._unload(layer)
        self._prefetch(layer + 1, self.routed.get(layer + 1))
        if getattr(out, "requires_grad", False):
            out.register_hook(lambda grad: self._backward(layer))

    def _backward(self, layer: int) -> None:
        # The gradient of the layer's output is ready: its backward (which fetches its
        # experts again) starts now, and the layer after it is done.
        self._unload(layer + 1)
        self._prefetch(layer, self.routed.get(layer))
        self._prefetch(layer - 1, self.routed.get(layer - 1))


def _routing(args: Any, kwargs: Any) -> Any:
    """The router's expert indices among the experts forward's arguments: its first
    integer tensor (``top_k_index``); ``None`` if it has none."""
    import torch

    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor) and not a.is_floating_point() and a.dtype != torch.bool:
            return a
    return None


def offload_experts(parent: Any, attr: str, store: Any, name: str, shape: Any, device: str, schedule: Schedule) -> Any:
    """Replaces parameter ``attr`` of the experts module ``parent`` by an
    :func:`OffloadedExperts` over ``store``'s per-expert slices of ``name``, and wraps
    ``parent``'s forward (once) in the re-fetching hooks and the schedule. Raises
    ``ValueError`` when ``name`` is not offloaded per expert."""
    import torch

    groups = [store.group_of(f"{name}[{e}]") for e in range(int(shape[0]))]
    if any(g is None for g in groups):
        raise ValueError(f"`{name}` is not offloaded per expert (load it with quant='nf4' and an offload_budget)")
    state = getattr(parent, "_wmap_offload", None)
    if state is None:
        state = {"refetch": Refetch(), "layer": schedule.add(groups)}
        parent._wmap_offload = state
        forward = parent.forward

        def offloaded_forward(*args: Any, **kwargs: Any) -> Any:
            schedule.before(state["layer"], _routing(args, kwargs))
            hooks = state["refetch"]
            with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
                out = forward(*args, **kwargs)
            schedule.after(state["layer"], out)
            return out

        parent.forward = offloaded_forward
    experts = OffloadedExperts(store, name, shape, groups, device, state["refetch"])
    if attr in parent._parameters:
        del parent._parameters[attr]
    setattr(parent, attr, experts)
    return experts
