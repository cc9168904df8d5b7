"""Test helpers shared by jgraph's tests and by users testing code built on jgraph.

One tolerance table (`TOLERANCES`, `tolerance`), tree comparison that reports
errors and the tolerance used (`assert_trees_close`), recompilation guards
(`assert_no_recompile`, `compilation_log`), CPU meshes (`cpu_mesh`) and
real multi-process runs (`run_distributed`).
"""

from jgraph.testing._assertions import assert_trees_close as assert_trees_close
from jgraph.testing._assertions import max_errors as max_errors
from jgraph.testing._compile import CompilationLog as CompilationLog
from jgraph.testing._compile import assert_no_recompile as assert_no_recompile
from jgraph.testing._compile import compilation_log as compilation_log
from jgraph.testing._distributed import run_distributed as run_distributed
from jgraph.testing._mesh import cpu_mesh as cpu_mesh
from jgraph.testing._tolerances import TOLERANCES as TOLERANCES
from jgraph.testing._tolerances import ComparisonKind as ComparisonKind
from jgraph.testing._tolerances import Tolerance as Tolerance
from jgraph.testing._tolerances import tolerance as tolerance

__all__ = [
    "TOLERANCES",
    "ComparisonKind",
    "CompilationLog",
    "Tolerance",
    "assert_no_recompile",
    "assert_trees_close",
    "compilation_log",
    "cpu_mesh",
    "max_errors",
    "run_distributed",
    "tolerance",
]
