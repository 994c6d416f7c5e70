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
    def get(self, name: str) -> Tensor: ...
    def prefetch(self, group: str) -> bool: ...
    def stats(self) -> Dict[str, Union[int, float, str]]: ...

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
) -> Store: ...
def cuda_available() -> bool: ...
def stdlib_models() -> List[Tuple[str, str, List[str]]]: ...
