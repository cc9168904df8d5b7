"""Pallas plumbing shared by the subsystems that write kernels (coserve, superopt).

Which platform a device is, whether a kernel must run in the Pallas interpreter there, the
Triton tile rules (power-of-two array sides, dot tiles of at least `TRITON_MIN_DOT`), validated
compiler parameters for the two Pallas GPU backends, and a CUDA export that lowers a kernel
for NVIDIA GPUs on a machine without one.

The two GPU routes (`GPU_ROUTES`): ``"triton"`` (Pallas-Triton: any tile shape whose sides are
powers of two, plain `jax.lax.dot_general`) and ``"mosaic_gpu"`` (Pallas Mosaic GPU: Hopper
and later; it has no lowering for a plain ``dot_general``, matmuls need its wgmma ops). The
compiler parameters passed to `pl.pallas_call` pick the route: `triton_params` or
`mosaic_gpu_params`.

Importing this module does not import JAX (its functions import what they need), so light
modules can use the route vocabulary and tile rules; ``import jgraph.core`` does not import it.

Example:
    >>> from jgraph.core.pallas import interpret_on, triton_tile_problem
    >>> interpret_on("cpu"), interpret_on("cuda")
    (True, False)
    >>> triton_tile_problem((48, 128))
    'tile (48, 128): 48 is not a power of two (Triton)'
"""

from jgraph.core._pallas import GPU_ROUTES as GPU_ROUTES
from jgraph.core._pallas import TRITON_MIN_DOT as TRITON_MIN_DOT
from jgraph.core._pallas import GpuRoute as GpuRoute
from jgraph.core._pallas import device_platform as device_platform
from jgraph.core._pallas import export_for_cuda as export_for_cuda
from jgraph.core._pallas import interpret_on as interpret_on
from jgraph.core._pallas import is_pow2 as is_pow2
from jgraph.core._pallas import mosaic_gpu_params as mosaic_gpu_params
from jgraph.core._pallas import next_pow2 as next_pow2
from jgraph.core._pallas import triton_params as triton_params
from jgraph.core._pallas import triton_tile_problem as triton_tile_problem

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
