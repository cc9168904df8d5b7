"""The six Mirage benchmark programs at the spec's shapes, and hand-written μGraphs.

`PROGRAMS` / `get_program` give each program as a `Program` (its kernel graph and shapes);
`is_known_good` tells whether a μGraph has a known-good structure from Mirage's saved
results; `HANDWRITTEN` / `handwritten` are equivalent μGraphs written by hand (the verifier's
completeness checks and the lowering's test cases).
"""

from jgraph.superopt._handwritten import HANDWRITTEN as HANDWRITTEN
from jgraph.superopt._handwritten import handwritten as handwritten
from jgraph.superopt._programs import PROGRAMS as PROGRAMS
from jgraph.superopt._programs import Program as Program
from jgraph.superopt._programs import get_program as get_program
from jgraph.superopt._programs import is_known_good as is_known_good

__all__ = [
    "HANDWRITTEN",
    "PROGRAMS",
    "Program",
    "get_program",
    "handwritten",
    "is_known_good",
]
