"""The calling convention of a superoptimized function: argument and result pytrees.

`superoptimize` searches the flat kernel graph of ``fn``; a `Signature` lets the
result take the same (pytree) arguments as ``fn`` and give back the same pytree
of results, in ``fn``'s output dtypes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jgraph.core import ConfigError

__all__ = ["Signature"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Signature:
    """Argument/result structure of the function a μGraph was captured from."""

    in_tree: Any  # jax.tree_util.PyTreeDef of the positional arguments (a tuple)
    out_tree: Any  # PyTreeDef of fn's result
    out_dtypes: tuple[str, ...]  # fn's output dtypes, leaf order

    def flatten(self, args: Sequence[Any]) -> list[Any]:
        """The leaves of ``args``; raises `ConfigError` for another structure."""
        import jax

        leaves, tree = jax.tree.flatten(tuple(args))
        if tree != self.in_tree:
            raise ConfigError(
                "args", str(tree), f"the function was captured with arguments {self.in_tree}",
                "pass arguments with the structure of the example arguments",
            )  # fmt: skip
        return leaves

    def unflatten(self, outs: Sequence[Any]) -> Any:
        """``fn``'s result pytree from the μGraph's outputs (cast to ``fn``'s dtypes)."""
        import jax

        cast = [o.astype(d) for o, d in zip(outs, self.out_dtypes, strict=True)]
        return jax.tree.unflatten(self.out_tree, cast)
