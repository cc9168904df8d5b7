"""Mirage μGraph superoptimization (Wu et al., OSDI'25) on JAX.

A μGraph is a kernel graph whose graph-defined kernels carry block graphs
(grid, for-loop, input iterators with imap/fmap, accumulators, output savers
with omap). `search` enumerates μGraphs equivalent to a program within bounds,
prunes with abstract expressions (an egglog e-graph), verifies survivors by
random tests over finite fields with large primes plus a float32/float16
screen, ranks them with an analytic cost model and caches the verified ones.
`superoptimize(fn, *args)` does all of it for a plain JAX function. The
interpreter (`evaluate`) runs the exact block schedule over floats or a field
and is the float reference for the Pallas lowering (a later issue).

Public submodules: `jgraph.superopt.ir` (the μGraph IR and builders),
`jgraph.superopt.programs` (Mirage's six benchmark programs, hand-written
μGraphs), `jgraph.superopt.verify` (the verifier, number systems, mutants),
`jgraph.superopt.cost` (the analytic cost model), `jgraph.superopt.config`
(the values of the config's string settings: backends, map modes) and
`jgraph.superopt.corpus` (ordinary JAX/Flax layer programs for `superoptimize`).

Importing it does not import JAX (only `capture`, `superoptimize`, `jax_function`,
the programs' jnp references and `demo` need it), so the CLI can read the
vocabularies above when it builds its parser.

Example:
    >>> import jax.numpy as jnp
    >>> from jgraph import superopt
    >>> g = superopt.new_kernel_graph()
    >>> x = g.new_input((2, 64)); w = g.new_input((64, 32))
    >>> g.mark_output(g.matmul(g.rms_norm(x), w))
    >>> res = g.superoptimize(superopt.SearchConfig(time_limit_s=60, max_kernel_ops=1))
    >>> res.best.graph.ops[0].kind, res.model_speedup > 1
    ('customized', True)
"""

from jgraph.superopt._builder import new_kernel_graph as new_kernel_graph
from jgraph.superopt._builder import new_threadblock_graph as new_threadblock_graph
from jgraph.superopt._candidate import Candidate as Candidate
from jgraph.superopt._candidate import SearchStats as SearchStats
from jgraph.superopt._config import SearchConfig as SearchConfig
from jgraph.superopt._demo import demo as demo
from jgraph.superopt._interp import evaluate as evaluate
from jgraph.superopt._jax import jax_function as jax_function
from jgraph.superopt._jaxpr import SUPPORTED_PRIMITIVES as SUPPORTED_PRIMITIVES
from jgraph.superopt._jaxpr import capture as capture
from jgraph.superopt._jaxpr import superoptimize as superoptimize
from jgraph.superopt._result import CacheWarning as CacheWarning
from jgraph.superopt._result import SearchResult as SearchResult
from jgraph.superopt._search import search as search
from jgraph.superopt._show import draw as draw
from jgraph.superopt._show import dump as dump
from jgraph.superopt._verify import VerifyConfig as VerifyConfig

__all__ = [
    "SUPPORTED_PRIMITIVES",
    "CacheWarning",
    "Candidate",
    "SearchConfig",
    "SearchResult",
    "SearchStats",
    "VerifyConfig",
    "capture",
    "demo",
    "draw",
    "dump",
    "evaluate",
    "jax_function",
    "new_kernel_graph",
    "new_threadblock_graph",
    "search",
    "superoptimize",
]
