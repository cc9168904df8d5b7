"""The vocabularies of the search's string settings, for front ends and checks.

`SearchConfig` (in `jgraph.superopt`) types ``backend`` as `Backend` and ``maps`` as
`MapMode`; `BACKENDS` and `MAP_MODES` are those types' values, and `SMEM_BUDGET` is
the shared memory per block each backend allows. The CLI's ``--backend`` and
``--maps`` choices come from here, so a new backend is added in one place.
"""

from jgraph.superopt._config import BACKENDS as BACKENDS
from jgraph.superopt._config import MAP_MODES as MAP_MODES
from jgraph.superopt._config import SMEM_BUDGET as SMEM_BUDGET
from jgraph.superopt._config import Backend as Backend
from jgraph.superopt._config import MapMode as MapMode

__all__ = [
    "BACKENDS",
    "MAP_MODES",
    "SMEM_BUDGET",
    "Backend",
    "MapMode",
]
