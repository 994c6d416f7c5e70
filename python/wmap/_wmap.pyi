"""Type stubs for the compiled part of wmap (see ``wmap/__init__.py`` for the API)."""

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

class WmapError(Exception):
    """A wmap failure. ``code``: ``"E0508"``; ``rendered``: the text wmapc prints;
    ``diagnostic``: the first error as a dict; ``diagnostics``: all of them."""

    code: str
    rendered: str
    diagnostic: Dict[str, Any]
    diagnostics: Dict[str, Any]

class Tensor:
    """Bytes wmap owns, exported through DLPack without a copy. Read-only."""

    def __dlpack__(
        self,
        *,
        stream: Optional[Any] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def as_uint8(self) -> "Tensor": ...
    @property
    def data_ptr(self) -> int: ...
    @property
    def shape(self) -> List[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def device(self) -> str: ...

class Quantized:
    """A quantized param: packed codes, scales, and for NF4/FP4 bitsandbytes' quant state."""

    format: str
    shape: List[int]
    dtype: str
    data: Tensor
    scales: Tensor
    tensor_scale: Optional[float]
    @property
    def quant_state(self) -> Optional[Dict[str, Any]]: ...

class Store:
    """Runtime names → :class:`Tensor` or :class:`Quantized`, over a weights manager."""

    @property
    def model(self) -> str: ...
    def __getitem__(self, name: str) -> Union[Tensor, Quantized]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> List[str]: ...
    def get(self, name: str) -> Tensor:
        """``name`` (or ``name[i]``, expert ``i`` of a param offloaded per expert) as
        bfloat16 in a pooled host buffer, its offload group brought in first."""
    def prefetch(self, group: str) -> bool:
        """Starts bringing offload group ``group`` in; False when there is no room."""
    def unload(self, group: str) -> bool:
        """Drops group ``group``'s copy if nothing uses it; whether it was dropped."""
    def groups(self) -> List[str]:
        """The offload groups' names (``layer=3/expert=5``), in the manager's order."""
    def group_of(self, name: str) -> Optional[str]:
        """The offload group of ``name`` / ``name[i]``; None when resident or unknown."""
    def stats(self) -> Dict[str, Union[int, float, str]]: ...

class DeviceStore:
    """CUDA builds only: runtime names → device :class:`Tensor` / :class:`Quantized`.
    Loaded with ``offload_budget``, the params with an offload group (MoE experts) live
    in page-locked host memory behind the GPU weights manager, reached through ``get`` /
    ``prefetch`` / ``unload`` / ``groups`` / ``group_of``; without one those raise E0803."""

    @property
    def model(self) -> str: ...
    def __getitem__(self, name: str) -> Union[Tensor, Quantized]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> List[str]: ...
    def get(self, name: str) -> Tensor:
        """``name`` (or ``name[i]``, expert ``i``) as a bfloat16 device tensor in a pooled
        buffer, its group brought to the device within the budget. The consumer's stream
        (DLPack's ``stream``) waits for the dequantize; the buffer is reused only after
        the work queued on that stream before the last array made from it was freed."""
    def prefetch(self, group: str) -> bool:
        """Starts copying ``group`` to the device; False when there is no room without
        evicting a group in use."""
    def unload(self, group: str) -> bool:
        """Drops ``group``'s device copy if nothing uses it; whether it was dropped."""
    def groups(self) -> List[str]: ...
    def group_of(self, name: str) -> Optional[str]: ...
    def stats(self) -> Dict[str, Union[int, float]]:
        """The load's figures; with a weights manager also ``hits``, ``misses``,
        ``bytes_moved``, ``evictions``, ``prefetches``, ``waited_seconds``,
        ``get_seconds``, ``group_bytes``, ``peak_group_bytes``, ``pool_bytes``,
        ``resident_bytes``, ``device_bytes``, ``peak_device_bytes``, ``budget``,
        ``host_bytes``."""

def check(
    config: Optional[str], model: Optional[str], checkpoint: Optional[str], strict: bool
) -> str: ...
def plan(checkpoint: str, model: Optional[str], config: Optional[str], strict: bool) -> str: ...
def load(
    path: str,
    model: Optional[str],
    quant: Optional[str],
    device: str,
    offload_budget: Optional[int],
    offload_policy: str,
    threads: int,
    allow_unclaimed: bool,
    progress: Optional[Callable[[int, int], None]],
    keep: Optional[List[str]] = None,
    tp_rank: int = 0,
    tp_size: int = 1,
    ep_rank: int = 0,
    ep_size: int = 1,
) -> Union[Store, DeviceStore]: ...
def cuda_available() -> bool: ...
def stdlib_models() -> List[Tuple[str, str, List[str]]]: ...
