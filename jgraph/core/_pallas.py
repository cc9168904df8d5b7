"""Pallas plumbing shared by the subsystems that write kernels; public as `jgraph.core.pallas`.

Platform helpers, the Triton tile rules, compiler parameters for the Pallas-Triton and Mosaic
GPU routes, and the CUDA export that lowers kernels on a machine without a GPU. This module
imports JAX; ``import jgraph.core`` does not import it. The Pallas backends are imported
inside the functions that need them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from jgraph.core._errors import ConfigError, check_int

if TYPE_CHECKING:
    import jax

__all__ = [
    "GPU_ROUTES",
    "TRITON_MIN_DOT",
    "GpuRoute",
    "device_platform",
    "export_for_cuda",
    "interpret_on",
    "is_pow2",
    "mosaic_gpu_params",
    "next_pow2",
    "triton_params",
    "triton_tile_problem",
]

log = logging.getLogger(__name__)

GpuRoute = Literal["triton", "mosaic_gpu"]
GPU_ROUTES: tuple[GpuRoute, ...] = get_args(GpuRoute)
TRITON_MIN_DOT = 16  # Triton's smallest dot tile side

# Custom calls whose export safety check `export_for_cuda` disables: the Pallas-Triton call
# and the Mosaic GPU calls (old and new name). Their payload is a kernel that JAX built.
_PALLAS_GPU_CALLS = ("__gpu$xla.gpu.triton", "mosaic_gpu", "mosaic_gpu_v2")
_TRITON_WARPS = (1, 2, 4, 8, 16)


def device_platform(device: jax.Device) -> str:
    """The backend platform of a device: "cuda", "rocm", "cpu", "tpu", ...

    JAX names both GPU vendors "gpu"; this tells them apart by the client's platform version.

    Args:
        device: a JAX device.

    Returns:
        The platform name, with "gpu" resolved to "cuda" or "rocm".

    Example:
        >>> import jax
        >>> device_platform(jax.devices("cpu")[0])
        'cpu'
    """
    if device.platform != "gpu":
        return device.platform
    version = str(getattr(device.client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version or "hip" in version else "cuda"


def is_pow2(n: int) -> bool:
    """Whether ``n`` is a power of two (1, 2, 4, ...); False for 0 and negatives.

    Example:
        >>> [is_pow2(n) for n in (0, 1, 3, 48, 64, -4)]
        [False, True, False, False, True, False]
    """
    return n >= 1 and n & (n - 1) == 0


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1): a Triton tile side padded up.

    Example:
        >>> [next_pow2(n) for n in (1, 3, 8, 12)]
        [1, 4, 8, 16]
    """
    return 1 << max(n - 1, 0).bit_length()


def interpret_on(platform: str) -> bool:
    """Whether Pallas kernels on ``platform`` can only run in the Pallas interpreter.

    True on "cpu" (no Pallas compiler there; the interpreter runs the kernel body as JAX ops,
    which is for tests, not speed). False on "cuda", "gpu", "rocm" and "tpu", where kernels
    compile; whether a given kernel has a lowering for that platform is the caller's question.

    Args:
        platform: a backend platform name, e.g. from `device_platform`.

    Example:
        >>> interpret_on("cpu"), interpret_on("cuda"), interpret_on("tpu")
        (True, False, False)
    """
    return platform == "cpu"


def triton_tile_problem(shape: Sequence[int], *, dot_operand: bool = False) -> str | None:
    """Why ``shape`` is not a legal Pallas-Triton array (block) shape, or None if it is.

    Triton requires every array in a kernel to have power-of-two sides. An operand of a dot
    (``jax.lax.dot_general`` / ``tl.dot``) also needs its last two sides >= `TRITON_MIN_DOT`.

    Args:
        shape: the block or value shape inside the kernel.
        dot_operand: also check the dot rules (at least 2 dims, last two >= 16).

    Returns:
        None when legal, else a short reason that names the tile.

    Example:
        >>> triton_tile_problem((64, 128)) is None
        True
        >>> triton_tile_problem((48, 128))
        'tile (48, 128): 48 is not a power of two (Triton)'
        >>> triton_tile_problem((8, 128), dot_operand=True)
        'tile (8, 128): 8 < 16, the smallest Triton dot side'
    """
    dims = tuple(int(s) for s in shape)
    for s in dims:
        if not is_pow2(s):
            return f"tile {dims}: {s} is not a power of two (Triton)"
    if dot_operand:
        if len(dims) < 2:
            return f"tile {dims}: a dot operand needs at least 2 dims (Triton)"
        for s in dims[-2:]:
            if s < TRITON_MIN_DOT:
                return f"tile {dims}: {s} < {TRITON_MIN_DOT}, the smallest Triton dot side"
    return None


def triton_params(*, num_warps: int = 4, num_stages: int = 2) -> Any:
    """Validated Pallas-Triton compiler parameters (they also select the Triton route on GPU).

    Args:
        num_warps: warps per program: 1, 2, 4, 8 or 16.
        num_stages: software-pipelining stages, >= 1.

    Returns:
        A ``jax.experimental.pallas.triton.CompilerParams`` for ``pl.pallas_call``'s
        ``compiler_params``; the interpreter ignores it.

    Raises:
        ConfigError: ``num_warps`` not a power of two in [1, 16], or ``num_stages`` < 1.

    Example:
        >>> triton_params(num_warps=8)
        CompilerParams(num_warps=8, num_stages=2)
    """
    from jax.experimental.pallas import triton as plt

    if isinstance(num_warps, bool) or num_warps not in _TRITON_WARPS:
        raise ConfigError(
            "num_warps",
            num_warps,
            "must be a power of two from 1 to 16 (Triton warps per program)",
            "use 4 (the default) or 8 for large tiles",
        )
    check_int("num_stages", num_stages, minimum=1, fix="use 2 (the default) or 3")
    return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def mosaic_gpu_params(*, num_stages: int = 2) -> Any:
    """Pallas Mosaic GPU compiler parameters (they select the Mosaic GPU route on GPU).

    ``num_stages`` becomes ``max_concurrent_steps`` (how many grid steps' copies are in flight)
    where the installed JAX has that field; otherwise it is dropped (logged at debug level).

    Args:
        num_stages: pipelining depth, >= 1.

    Returns:
        A ``jax.experimental.pallas.mosaic_gpu.CompilerParams``.

    Raises:
        ConfigError: ``num_stages`` < 1.

    Example:
        >>> type(mosaic_gpu_params()).__name__
        'CompilerParams'
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu

    check_int("num_stages", num_stages, minimum=1, fix="use 2 (the default) or 3")
    if "max_concurrent_steps" in inspect.signature(plgpu.CompilerParams).parameters:
        return plgpu.CompilerParams(max_concurrent_steps=num_stages)
    log.debug(
        "this jax's Mosaic GPU CompilerParams has no max_concurrent_steps; num_stages ignored"
    )
    return plgpu.CompilerParams()


def export_for_cuda(fn: Callable[..., Any], *avals: Any) -> jax.export.Exported:
    """Lowers ``fn`` (Pallas kernels included) for CUDA, on any machine, GPU or not.

    The Pallas GPU lowerings run in Python: the Triton IR or the Mosaic GPU module is built
    and verified while exporting, so a CPU-only CI catches non-power-of-two tiles, dots on
    the Mosaic GPU route and similar lowering errors. What only the GPU compiler sees does not
    show here: shared-memory overflow, register pressure and ptxas errors need a real GPU
    compile (``jax.jit(fn).lower(...).compile()`` on a CUDA device).

    Args:
        fn: the function to export; wrapped in `jax.jit` unless it is already jitted.
        *avals: its arguments: arrays or ``jax.ShapeDtypeStruct``s.

    Returns:
        The ``jax.export.Exported``; ``.mlir_module()`` holds the kernel custom calls
        (``__gpu$xla.gpu.triton`` for Triton, ``mosaic_gpu_v2`` for Mosaic GPU).

    Raises:
        ValueError: from the Pallas lowering, e.g. a Triton block whose size is not a power
            of two (see `triton_tile_problem`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> exp = export_for_cuda(jnp.exp, jax.ShapeDtypeStruct((4,), jnp.float32))
        >>> exp.platforms
        ('cuda',)
    """
    import jax

    jitted = fn if hasattr(fn, "trace") and hasattr(fn, "lower") else jax.jit(fn)
    checks = [jax.export.DisabledSafetyCheck.custom_call(name) for name in _PALLAS_GPU_CALLS]
    return jax.export.export(jitted, platforms=["cuda"], disabled_checks=checks)(*avals)
