"""A verified μGraph as a JAX function: graph-defined kernels become Pallas kernels.

Each graph-defined kernel is one ``pl.pallas_call`` (`jgraph.superopt._lower_block`);
pre-defined kernel ops are jnp/lax ops that XLA fuses as it likes (so the
all-pre-defined candidate is exactly the XLA program). Device tensors are in the
storage dtype (the graph inputs' dtype), partial results of split kernels in
float32. Routes:

* ``"triton"``: Pallas on the Triton backend (NVIDIA; jax 0.10 and 0.11, where
  it is deprecated but kept);
* ``"mosaic_gpu"``: Pallas Mosaic GPU (Hopper and later, the maintained route).
  Its Pallas lowering has no plain dot (it needs ``wgmma`` on shared-memory
  refs), so block graphs with a matmul do not lower on it yet;
* ``"jax_triton"``: Triton source written by `jgraph.superopt._triton_emit` (tiles
  padded to powers of two and masked, as Mirage's Triton transpiler does, so
  tiles Pallas-Triton rejects run) and called through jax-triton (the optional
  ``gpu`` extra; it needs a CUDA jaxlib). On CPU the emitted kernels are tested
  in Triton's interpreter and compiled to cubins without a GPU;
* ``"interpret"``: the Pallas interpreter (CPU; correctness, not speed).

``"auto"`` picks the interpreter on CPU and, on an NVIDIA GPU, the first of
Triton, Mosaic GPU and (if installed) jax-triton that lowers the μGraph
(`lowering_problem` decides).
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

from jgraph.core import ConfigError, check_int
from jgraph.core.pallas import GPU_ROUTES, GpuRoute, is_pow2
from jgraph.superopt._ir import KernelGraph

__all__ = [
    "ROUTES", "KernelKnobs", "LoweredGraph", "Route", "export_cuda", "lower", "lowering_problem",
]  # fmt: skip

Route = Literal["auto", "triton", "mosaic_gpu", "jax_triton", "interpret"]
ROUTES: tuple[Route, ...] = get_args(Route)
_GPU_ROUTES = (*GPU_ROUTES, "jax_triton")  # the Pallas ones (`jax.export` checks them) first


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelKnobs:
    """Per-kernel launch knobs (Mirage's block_dim / pipeline stages).

    Attributes:
        num_warps: Triton warps per program (Mirage's block_dim 128 = 4 warps).
        num_stages: software-pipelining stages (Triton ``num_stages``, Mosaic GPU
            ``max_concurrent_steps``).
    """

    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        check_int("KernelKnobs.num_warps", self.num_warps, minimum=1, maximum=16)
        if not is_pow2(self.num_warps):
            raise ConfigError(
                "KernelKnobs.num_warps", self.num_warps, "must be a power of two", "use 1..16"
            )
        check_int("KernelKnobs.num_stages", self.num_stages, minimum=1, maximum=8)


def _compiler_params(route: str, knobs: KernelKnobs) -> Any:
    from jgraph.core.pallas import mosaic_gpu_params, triton_params

    if route == "triton":
        return triton_params(num_warps=knobs.num_warps, num_stages=knobs.num_stages)
    if route == "mosaic_gpu":
        return mosaic_gpu_params(num_stages=knobs.num_stages)
    return None


def _kernel_op(kind: str, args: Sequence[Any], attrs: dict[str, Any], storage: Any) -> Any:
    """A pre-defined op: float32 math on storage-dtype tensors, stored back (XLA fuses)."""
    import jax.numpy as jnp

    from jgraph.superopt import _lower_ops as ops

    dot_dtype = ops.dot_dtype(storage)
    if kind == "matmul":
        return ops.dot(args[0], args[1], dot_dtype).astype(storage)
    return ops.apply(kind, [a.astype(jnp.float32) for a in args], attrs, dot_dtype).astype(storage)


def _run(graph: KernelGraph, *arrays: Any, route: str, knobs: KernelKnobs,
         storage: Any, poison: bool = False) -> list[Any]:  # fmt: skip
    from jgraph.superopt._lower_block import block_call

    params = _compiler_params(route, knobs)
    vals = [a.astype(storage) for a in arrays]
    for n, op in enumerate(graph.ops):
        args = [vals[i] for i in op.inputs]
        if op.block is not None and route == "jax_triton":
            from jgraph.superopt._triton_run import block_call_jax_triton

            vals.extend(
                block_call_jax_triton(
                    op.block, args, storage=storage, num_warps=knobs.num_warps,
                    num_stages=knobs.num_stages, name=f"jgraph_mugraph_k{n}",
                )
            )  # fmt: skip
        elif op.block is not None:
            vals.extend(
                block_call(
                    op.block, args, storage=storage, compiler_params=params,
                    interpret=route == "interpret", name=f"jgraph_mugraph_k{n}", poison=poison,
                )
            )  # fmt: skip
        else:
            vals.append(_kernel_op(op.kind, args, op.attr, storage))
    # A saver whose grid cuts a reduced dim stores float32 partials (`partial_outputs`);
    # when such a saver writes a graph output (e.g. a sum over a last dim the grid cut
    # to one element), the μGraph still returns the program's dtype.
    return [vals[o].astype(storage) for o in graph.outputs]


def _storage(graph: KernelGraph, dtype: str | None) -> Any:
    import jax.numpy as jnp

    return jnp.dtype(dtype or (graph.inputs[0].dtype if graph.inputs else "float32"))


def _in_dtypes(graph: KernelGraph, dtype: str | None) -> list[str] | None:
    """What callers pass: every input in ``dtype`` if given, else each in its graph dtype."""
    return None if dtype else [s.dtype for s in graph.inputs]


def auto_gpu_routes() -> tuple[str, ...]:
    """The GPU routes ``"auto"`` tries, in order: jax-triton (the optional ``gpu`` extra)
    last, and only when it is installed."""
    import importlib.util

    return _GPU_ROUTES if importlib.util.find_spec("jax_triton") is not None else GPU_ROUTES


class LoweredGraph:
    """A μGraph as a jitted JAX callable: ``f(*arrays) -> list of outputs``.

    Usable inside `jax.jit`. It accepts exactly the shapes of the graph's inputs
    in the storage dtype and raises `ConfigError` (naming the argument) for others.
    """

    def __init__(
        self, graph: KernelGraph, *, route: str, knobs: KernelKnobs, storage: Any,
        poison: bool = False, in_dtypes: Sequence[Any] | None = None,
    ) -> None:  # fmt: skip
        import jax
        import jax.numpy as jnp

        self.graph, self.route, self.knobs, self.storage = graph, route, knobs, storage
        # What callers pass: the graph inputs' dtypes (cast to the storage dtype inside).
        self.in_dtypes = tuple(jnp.dtype(d) for d in (in_dtypes or [storage] * len(graph.inputs)))
        run = functools.partial(_run, graph, route=route, knobs=knobs, storage=storage)
        self._fn = jax.jit(functools.partial(run, poison=poison))

    def check_args(self, arrays: Sequence[Any]) -> None:
        """Raises `ConfigError` unless ``arrays`` match the graph's inputs (shape and dtype)."""
        import jax.numpy as jnp

        if len(arrays) != len(self.graph.inputs):
            raise ConfigError(
                "arrays", len(arrays), f"the μGraph takes {len(self.graph.inputs)} arrays",
                "pass one array per input of the searched function",
            )  # fmt: skip
        for k, (a, want) in enumerate(zip(arrays, self.in_dtypes, strict=True)):
            spec = self.graph.inputs[k]
            shape, dtype = tuple(getattr(a, "shape", ())), getattr(a, "dtype", None)
            if shape != tuple(spec.shape) or dtype is None or jnp.dtype(dtype) != want:
                raise ConfigError(
                    f"arrays[{k}]", f"{shape} {dtype}",
                    f"the kernels were searched and lowered for {tuple(spec.shape)} {want.name}",
                    "search again for these shapes and dtypes (superoptimize caches per shape)",
                )  # fmt: skip

    def __call__(self, *arrays: Any) -> list[Any]:
        self.check_args(arrays)
        return self._fn(*arrays)

    def lower_for_cuda(self) -> Any:
        """`jax.export` of this function for CUDA (works without a GPU)."""
        import jax

        from jgraph.core.pallas import export_for_cuda

        avals = [
            jax.ShapeDtypeStruct(tuple(s.shape), d)
            for s, d in zip(self.graph.inputs, self.in_dtypes, strict=True)
        ]
        return export_for_cuda(self._fn, *avals)


def _platform() -> str:
    import jax

    from jgraph.core.pallas import device_platform

    return device_platform(jax.devices()[0])


def resolve_route(route: str, graph: KernelGraph, knobs: KernelKnobs, storage: Any) -> str:
    """The concrete route for ``route`` on this machine's default device."""
    if route not in ROUTES:
        raise ConfigError("route", route, "unknown lowering route", f"use one of {ROUTES}")
    platform = _platform()
    if route == "auto":
        if platform == "cpu":
            return "interpret"
        if platform != "cuda":
            raise ConfigError(
                "route", route, f"has no Pallas lowering for platform {platform!r}",
                "run the μGraph with jax_function (XLA) on this device",
            )  # fmt: skip
        problems = {}
        for r in auto_gpu_routes():
            problems[r] = lowering_problem(graph, route=r, knobs=knobs, dtype=storage.name)
            if problems[r] is None:
                return r
        raise ConfigError("route", route, f"no GPU route lowers this μGraph: {problems}", "")
    if route in _GPU_ROUTES and platform != "cuda":
        raise ConfigError(
            "route", route, f"runs on an NVIDIA GPU, and this device is {platform!r}",
            "use route='interpret' on CPU (or lowering_problem to check CUDA lowering)",
        )  # fmt: skip
    return route


def lower(
    graph: KernelGraph,
    *,
    route: Route = "auto",
    knobs: KernelKnobs | None = None,
    dtype: str | None = None,
    poison_outputs: bool = False,
) -> LoweredGraph:
    """Lowers a μGraph to a jitted JAX function whose graph-defined kernels are Pallas kernels.

    Args:
        graph: a verified μGraph (e.g. ``result.best.graph``).
        route: ``"auto"``, ``"triton"``, ``"mosaic_gpu"``, ``"jax_triton"`` or
            ``"interpret"`` (module docs).
        knobs: launch knobs (default `KernelKnobs()`).
        dtype: the storage dtype, and then every argument's dtype (default: the
            first input's dtype; each argument in its graph input's dtype).
        poison_outputs: every kernel output starts as NaN (a testing aid: an element
            no program writes shows as NaN instead of stale memory).

    Returns:
        A `LoweredGraph`: ``f(*arrays) -> list`` of the graph's outputs.

    Example:
        >>> import jax.numpy as jnp
        >>> from jgraph.superopt.programs import get_program, handwritten
        >>> prog = get_program("rmsnorm_linear", scale=16, dtype="float32")
        >>> f = lower(handwritten("rmsnorm_linear", prog), route="interpret")
        >>> f(*[jnp.ones(s, jnp.float32) for s in prog.shapes])[0].shape
        (2, 384)
    """
    knobs = knobs or KernelKnobs()
    graph = graph.validate()
    storage = _storage(graph, dtype)
    concrete = resolve_route(route, graph, knobs, storage)
    if poison_outputs and concrete == "jax_triton":
        raise ConfigError(
            "poison_outputs", True, "is not supported on route 'jax_triton'",
            "poison on the Pallas routes (the emitter's CPU runner poisons its outputs)",
        )  # fmt: skip
    return LoweredGraph(
        graph, route=concrete, knobs=knobs, storage=storage, poison=poison_outputs,
        in_dtypes=_in_dtypes(graph, dtype),
    )  # fmt: skip


def export_cuda(
    graph: KernelGraph,
    *,
    route: GpuRoute = "triton",
    knobs: KernelKnobs | None = None,
    dtype: str | None = None,
) -> Any:
    """The μGraph lowered for CUDA on ``route``, as a `jax.export.Exported` (no GPU needed).

    Raises:
        ConfigError: ``route`` is not a GPU route.
        Exception: whatever the Pallas lowering raises (see `lowering_problem`).
    """
    if route not in GPU_ROUTES:
        raise ConfigError("route", route, "is not a Pallas GPU route", f"use one of {GPU_ROUTES}")
    knobs = knobs or KernelKnobs()
    graph = graph.validate()
    storage = _storage(graph, dtype)
    if route == "mosaic_gpu" and any(
        o.kind == "matmul" for op in graph.ops if op.block is not None for o in op.block.ops
    ):
        raise NotImplementedError(
            "Mosaic GPU: block matmuls need wgmma on shared-memory refs (not emitted yet)"
        )
    fn = LoweredGraph(
        graph, route=route, knobs=knobs, storage=storage, in_dtypes=_in_dtypes(graph, dtype)
    )
    return fn.lower_for_cuda()


@functools.lru_cache(maxsize=512)
def lowering_problem(
    graph: KernelGraph,
    *,
    route: Literal["triton", "mosaic_gpu", "jax_triton"] = "triton",
    knobs: KernelKnobs | None = None,
    dtype: str | None = None,
) -> str | None:
    """Why ``graph`` does not lower for CUDA on ``route``, or None if it does.

    It runs the real lowering, no GPU needed. Pallas routes: `export_cuda`
    (`jax.export` for ``platforms=["cuda"]``), so Triton's power-of-two tiles, its
    2-D dots and Mosaic GPU's missing ops are caught; shared-memory overflow and
    ptxas limits show only on a GPU compile (the search's shared-memory budget
    bounds the tiles instead). ``"jax_triton"``: each emitted kernel is compiled
    down to a Hopper cubin with Triton's bundled ptxas (needs the ``triton``
    package), which catches those limits too.

    Example:
        >>> from jgraph.superopt.programs import get_program, handwritten
        >>> prog = get_program("gated_mlp", scale=16)
        >>> lowering_problem(handwritten("gated_mlp", prog)) is None
        True
        >>> prog = get_program("rmsnorm_linear", scale=16)  # 384 = 3 * 128 columns
        >>> "power of 2" in lowering_problem(handwritten("rmsnorm_linear", prog))
        True
    """
    try:
        if route == "jax_triton":
            _compile_emitted(graph, knobs or KernelKnobs(), _storage(graph, dtype))
        else:
            export_cuda(graph, route=route, knobs=knobs, dtype=dtype)
    except ConfigError:
        raise
    except Exception as exc:  # any lowering failure makes the candidate unusable on the route
        return f"{route}: {_describe(exc)}"
    return None


def _compile_emitted(graph: KernelGraph, knobs: KernelKnobs, storage: Any) -> None:
    """Compiles every graph-defined kernel's emitted Triton source for CUDA (no GPU)."""
    from jgraph.superopt._tiling import partial_outputs
    from jgraph.superopt._triton_emit import emit_block
    from jgraph.superopt._triton_run import compile_for_cuda

    graph = graph.validate()
    dtypes = [storage.name] * len(graph.inputs)  # device dtype per tensor id
    for n, op in enumerate(graph.ops):
        if op.block is None:
            dtypes.append(storage.name)
            continue
        shapes = [graph.shapes[i] for i in op.inputs]
        src = emit_block(op.block, shapes, storage=storage.name, name=f"jgraph_mugraph_k{n}")
        compile_for_cuda(
            src, [dtypes[i] for i in op.inputs],
            num_warps=knobs.num_warps, num_stages=knobs.num_stages,
        )  # fmt: skip
        partial = partial_outputs(op.block, shapes)
        dtypes += ["float32" if p else storage.name for p in partial]


def _describe(exc: BaseException) -> str:
    """``Type: first line`` of ``exc``; a bare ``assert`` (no message) names where it failed.

    Triton's lowering rejects a batched dot with a bare ``assert``, which would
    otherwise leave the problem string empty.
    """
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text.splitlines()[0][:300]}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    f = frames[-1]
    where = "/".join(f.filename.replace("\\", "/").split("/")[-3:])
    return f"{type(exc).__name__} at {where}:{f.lineno}: {(f.line or '').strip()[:200]}"


def lowered_callable(fn: LoweredGraph) -> Callable[..., list[Any]]:
    """The jitted function without argument checks (for timing loops)."""
    return fn._fn
