"""A captured program: superoptimized regions and the XLA steps between them.

`superoptimize` searches each region's kernel graph; `CapturedProgram.run` feeds
the arguments through the steps in order: a region reshapes its inputs to their
kernel layouts and runs the chosen μGraph, an XLA step binds the jaxpr primitive
it kept (``cumsum``, ``sort``, ...) as JAX would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from jgraph.core import ConfigError
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._region import Src

if TYPE_CHECKING:
    from jgraph.superopt._result import SearchResult

__all__ = ["CapturedProgram", "RegionStep", "XlaStep"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegionStep:
    """Runs region ``index``: inputs from ``inputs``, outputs as (key, dims, logical shape)."""

    index: int
    graph: KernelGraph
    inputs: tuple[Src, ...]
    outputs: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class XlaStep:
    """A jaxpr equation kept as XLA, with why."""

    eqn: Any
    inputs: tuple[Src, ...]
    in_dtypes: tuple[Any, ...]
    outputs: tuple[int, ...]
    reason: str

    @property
    def primitive(self) -> str:
        return str(self.eqn.primitive.name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CapturedProgram:
    """Steps over keyed values; ``results[i]`` is region ``i``'s search result."""

    arg_keys: tuple[int, ...]
    arg_shapes: tuple[tuple[int, ...], ...]
    steps: tuple[RegionStep | XlaStep, ...]
    outputs: tuple[Src, ...]
    results: tuple[SearchResult, ...] = ()
    main: int = 0

    @property
    def regions(self) -> tuple[RegionStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, RegionStep))

    @property
    def xla_ops(self) -> tuple[str, ...]:
        """One line per operator kept as XLA: ``"primitive: why"``."""
        return tuple(f"{s.primitive}: {s.reason}" for s in self.steps if isinstance(s, XlaStep))

    def run(self, leaves: Sequence[Any], main_kernel: Callable[[], Any]) -> list[Any]:
        """The program's output leaves for argument ``leaves`` (inside `jax.jit` too)."""
        import jax.numpy as jnp

        env: dict[int, Any] = {}
        for k, (key, shape, x) in enumerate(
            zip(self.arg_keys, self.arg_shapes, leaves, strict=True)
        ):
            if tuple(x.shape) != shape:
                raise ConfigError(
                    f"arrays[{k}]", tuple(x.shape), f"the function was captured with {shape}",
                    "pass arrays of the example arguments' shapes",
                )  # fmt: skip
            env[key] = x

        def get(src: Src) -> Any:
            return env[src[1]] if src[0] == "key" else jnp.asarray(src[1])

        regions = {s.index: n for n, s in enumerate(self.regions)}
        for step in self.steps:
            if isinstance(step, XlaStep):
                from jgraph.superopt._capture import Capture

                vals = [get(s).astype(d) for s, d in zip(step.inputs, step.in_dtypes, strict=True)]
                env.update(zip(step.outputs, Capture.bind(step.eqn, vals), strict=True))
                continue
            xs = [
                jnp.reshape(get(s), spec.shape).astype(spec.dtype)
                for s, spec in zip(step.inputs, step.graph.inputs, strict=True)
            ]
            n = regions[step.index]
            kernel = main_kernel() if n == self.main else self.results[n].kernel()
            for (key, dims, shape), o in zip(step.outputs, kernel(*xs), strict=True):
                env[key] = jnp.broadcast_to(jnp.reshape(o, [o.shape[d] for d in dims]), shape)
        return [get(s) for s in self.outputs]
