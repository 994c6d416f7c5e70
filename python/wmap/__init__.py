"""wmap: checked, quantize-on-load HuggingFace checkpoint loading.

    >>> import wmap, numpy as np
    >>> store = wmap.load("ckpt/", quant="nf4")          # a wmap.Store
    >>> w = np.from_dlpack(store["lm_head"].as_uint8())  # no copy: wmap's own bytes
    >>> q = store["layers.0.attention.qkv"]              # a wmap.Quantized (NF4)
    >>> q.quant_state["absmax"], q.quant_state["blocksize"]

Full-precision params are :class:`Tensor` objects implementing ``__dlpack__`` and
``__dlpack_device__`` (``numpy.from_dlpack`` / ``torch.from_dlpack`` take them without
a copy); quantized params are :class:`Quantized` objects carrying packed codes and, for
NF4/FP4, the quant state in bitsandbytes' form. Every failure is a :class:`WmapError`
with ``.code`` (``"E0508"``), ``.rendered`` (the text ``wmapc`` prints) and
``.diagnostic`` (the structured one, as in ``wmapc check --format json``).

The CUDA path is optional and loaded lazily: importing wmap never touches a GPU driver.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ._wmap import Quantized, Store, Tensor, WmapError
from ._wmap import check as _check
from ._wmap import cuda_available, stdlib_models
from ._wmap import load as _load
from ._wmap import plan as _plan

__all__ = [
    "CheckResult",
    "Diagnostic",
    "Label",
    "Quantized",
    "Store",
    "Tensor",
    "WmapError",
    "check",
    "cuda_available",
    "load",
    "plan",
    "stdlib_models",
]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Label:
    """A span a diagnostic points at: file, byte range, 1-based line and column."""

    file: str
    start: int
    end: int
    line: int
    column: int
    primary: bool
    message: str


@dataclass(frozen=True)
class Diagnostic:
    """One finding: a code such as ``E0301``, its kebab-case name, severity and text."""

    code: str
    name: str
    severity: str
    message: str
    labels: List[Label] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    help: Optional[str] = None

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Diagnostic":
        return Diagnostic(
            code=d["code"],
            name=d["name"],
            severity=d["severity"],
            message=d["message"],
            labels=[Label(**label) for label in d.get("labels", [])],
            notes=list(d.get("notes", [])),
            help=d.get("help"),
        )


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found. ``ok`` is true when there is no error (warnings allowed)."""

    diagnostics: List[Diagnostic]
    errors: int
    warnings: int
    model: Optional[str]
    defaults: Dict[str, str]

    @property
    def ok(self) -> bool:
        return self.errors == 0


def _path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def check(
    config: Optional[PathLike] = None,
    model: Optional[str] = None,
    checkpoint: Optional[PathLike] = None,
    strict: bool = False,
) -> CheckResult:
    """Checks a mapping against a config (and a checkpoint's headers), like ``wmapc check``.

    ``model`` is a ``.wmap`` path or a stdlib model name; without it the model serving
    the config's ``architectures`` is used. ``config`` defaults to the checkpoint's.
    Findings in the inputs come back as diagnostics; a failure to start (an unreadable
    file, an unknown model name) raises :class:`WmapError`.
    """
    out = json.loads(_check(_path(config), model, _path(checkpoint), strict))
    return CheckResult(
        diagnostics=[Diagnostic.from_json(d) for d in out["diagnostics"]],
        errors=out["errors"],
        warnings=out["warnings"],
        model=out.get("model"),
        defaults=dict(out.get("defaults") or {}),
    )


def plan(
    checkpoint: PathLike,
    model: Optional[str] = None,
    config: Optional[PathLike] = None,
    strict: bool = False,
) -> Dict[str, Any]:
    """The load plan as a dict (``wmapc plan --format json``): model, files, targets
    (name, shape, dtype, recipe, offload group, quantizable). Raises :class:`WmapError`
    when the model does not bind to the checkpoint."""
    return json.loads(_plan(os.fspath(checkpoint), model, _path(config), strict))


def load(
    path: PathLike,
    model: Optional[str] = None,
    quant: Optional[str] = None,
    device: str = "cpu",
    offload_budget: Optional[int] = None,
    offload_policy: str = "order",
    threads: int = 0,
    allow_unclaimed: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    keep: Optional[Sequence[str]] = None,
    tp_rank: int = 0,
    tp_size: int = 1,
    ep_rank: int = 0,
    ep_size: int = 1,
) -> "Union[Store, Any]":
    """Loads a checkpoint folder (config.json + safetensors) into a :class:`Store`.

    ``quant``: ``nf4``, ``nf4-dq``, ``fp4``, ``fp8``, ``fp8-channel``, ``fp8-block``,
    ``nvfp4`` or ``mxfp4`` (the params the mapping marks quantizable). ``device``: ``cpu``,
    ``cuda``, ``cuda:N`` or ``auto`` (CUDA needs a CUDA build of the package, which returns
    a ``DeviceStore`` of device tensors; a CPU build raises E0711). ``offload_budget``
    (bytes; on the CPU with ``quant``): the params with an offload group (MoE experts)
    stay in the weights manager's host pool (page-locked, on a CUDA device) and are
    brought in by ``store.get`` / ``store.prefetch`` within the budget, per group
    (``store.groups()``, ``store.group_of(name)``); ``store.stats()`` counts hits,
    misses, bytes moved and time waited. ``wmap.torch.load_into(...,
    offload_budget=B)`` puts MoE experts behind such a store. ``progress(done_bytes, total_bytes)`` is called as tensors land,
    in increasing order, the last call with the total. ``keep``: runtime names loaded in
    full precision although the mapping marks them quantizable (a name the plan lacks is
    E0802).

    ``tp_rank`` of ``tp_size`` (and ``ep_rank`` of ``ep_size``): load only this rank's
    shards, each param cut by its ``shard`` rule (column-parallel on dim 0, row-parallel
    on dim 1, experts in contiguous blocks; the rest replicated), reading only those
    bytes. Inside ``torchrun``, pass ``RANK`` / ``WORLD_SIZE`` and wrap each local shard
    with ``DTensor.from_local``; wmap only reads, the ranks never talk. A size that does
    not divide a param raises E0450 / E0451, a rank out of range E0540.
    """
    for what, rank, size in (("tp", tp_rank, tp_size), ("ep", ep_rank, ep_size)):
        if rank < 0 or size < 1:
            raise ValueError(f"{what}_rank must be >= 0 and {what}_size >= 1")
    if offload_budget is not None and offload_budget < 0:
        raise ValueError("offload_budget must be a byte count >= 0")
    if threads < 0:
        raise ValueError("threads must be >= 0")
    return _load(
        os.fspath(path),
        model,
        quant,
        device,
        offload_budget,
        offload_policy,
        threads,
        allow_unclaimed,
        progress,
        None if keep is None else [str(k) for k in keep],
        tp_rank,
        tp_size,
        ep_rank,
        ep_size,
    )
