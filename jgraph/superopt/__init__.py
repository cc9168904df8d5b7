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

from jgraph.superopt._absexpr import Oracle as Oracle
from jgraph.superopt._builder import DTensor as DTensor
from jgraph.superopt._builder import KernelGraphBuilder as KernelGraphBuilder
from jgraph.superopt._builder import STensor as STensor
from jgraph.superopt._builder import ThreadblockGraphBuilder as ThreadblockGraphBuilder
from jgraph.superopt._builder import new_kernel_graph as new_kernel_graph
from jgraph.superopt._builder import new_threadblock_graph as new_threadblock_graph
from jgraph.superopt._candidate import Candidate as Candidate
from jgraph.superopt._candidate import SearchStats as SearchStats
from jgraph.superopt._config import SearchConfig as SearchConfig
from jgraph.superopt._cost import Cost as Cost
from jgraph.superopt._cost import CostModel as CostModel
from jgraph.superopt._cost import Device as Device
from jgraph.superopt._cost import thread_fusion as thread_fusion
from jgraph.superopt._demo import demo as demo
from jgraph.superopt._handwritten import HANDWRITTEN as HANDWRITTEN
from jgraph.superopt._handwritten import handwritten as handwritten
from jgraph.superopt._interp import evaluate as evaluate
from jgraph.superopt._ir import BlockGraph as BlockGraph
from jgraph.superopt._ir import BlockInput as BlockInput
from jgraph.superopt._ir import BlockOutput as BlockOutput
from jgraph.superopt._ir import KernelGraph as KernelGraph
from jgraph.superopt._ir import KernelOp as KernelOp
from jgraph.superopt._ir import Op as Op
from jgraph.superopt._ir import TensorSpec as TensorSpec
from jgraph.superopt._jax import jax_function as jax_function
from jgraph.superopt._jaxpr import SUPPORTED_PRIMITIVES as SUPPORTED_PRIMITIVES
from jgraph.superopt._jaxpr import capture as capture
from jgraph.superopt._jaxpr import superoptimize as superoptimize
from jgraph.superopt._mutants import mutants as mutants
from jgraph.superopt._ops import ShapeError as ShapeError
from jgraph.superopt._programs import PROGRAMS as PROGRAMS
from jgraph.superopt._programs import Program as Program
from jgraph.superopt._programs import get_program as get_program
from jgraph.superopt._programs import is_known_good as is_known_good
from jgraph.superopt._result import CacheWarning as CacheWarning
from jgraph.superopt._result import SearchResult as SearchResult
from jgraph.superopt._result import cache_key as cache_key
from jgraph.superopt._result import search as search
from jgraph.superopt._ring import FloatRing as FloatRing
from jgraph.superopt._ring import ModRing as ModRing
from jgraph.superopt._ring import safe_prime_pairs as safe_prime_pairs
from jgraph.superopt._show import draw as draw
from jgraph.superopt._show import dump as dump
from jgraph.superopt._verify import Verdict as Verdict
from jgraph.superopt._verify import Verifier as Verifier
from jgraph.superopt._verify import VerifyConfig as VerifyConfig

__all__ = [
    "HANDWRITTEN",
    "PROGRAMS",
    "SUPPORTED_PRIMITIVES",
    "BlockGraph",
    "BlockInput",
    "BlockOutput",
    "CacheWarning",
    "Candidate",
    "Cost",
    "CostModel",
    "DTensor",
    "Device",
    "FloatRing",
    "KernelGraph",
    "KernelGraphBuilder",
    "KernelOp",
    "ModRing",
    "Op",
    "Oracle",
    "Program",
    "STensor",
    "SearchConfig",
    "SearchResult",
    "SearchStats",
    "ShapeError",
    "TensorSpec",
    "ThreadblockGraphBuilder",
    "Verdict",
    "Verifier",
    "VerifyConfig",
    "cache_key",
    "capture",
    "demo",
    "draw",
    "dump",
    "evaluate",
    "get_program",
    "handwritten",
    "is_known_good",
    "jax_function",
    "mutants",
    "new_kernel_graph",
    "new_threadblock_graph",
    "safe_prime_pairs",
    "search",
    "superoptimize",
    "thread_fusion",
]
