"""Views of a `StagePlan` for people: a stage table and a PNG chart.

`plan_rows` gives one row per stage (for `jgraph.core.format_table`);
`write_plan_png` draws the stage DAG and the simulated schedule (matplotlib is
imported only when it is called).

Example:
    >>> from jgraph.core import format_table
    >>> from jgraph.pipeline import ClusterConfig, plan_pipeline
    >>> from jgraph.pipeline.models import mmt
    >>> from jgraph.pipeline.report import plan_rows
    >>> plan = plan_pipeline(mmt(branches=2, layers=2), ClusterConfig(num_devices=4), batch=32)
    >>> format_table(plan_rows(plan)).split()[:3]
    ['stage', 'nodes', 'devices']
"""

from jgraph.pipeline._report import plan_rows as plan_rows
from jgraph.pipeline._report import write_plan_png as write_plan_png

__all__ = ["plan_rows", "write_plan_png"]
