"""The planners' vocabulary, and the plan assembler they share.

`PLANNER_NAMES` and `SCHEDULE_KINDS` are the names `plan_pipeline` and
`PlannerConfig` accept (the CLI's ``--planner`` and ``--schedule`` choices),
derived from the `PlannerName` and `ScheduleKind` types. `assemble_plan` turns a
partition (node indices per stage, a data-parallel degree per stage) into a
placed, scheduled and simulated `StagePlan`, as every planner's candidates are:
use it to cost a partition chosen by hand.

Example:
    >>> from jgraph.pipeline import ClusterConfig, CostModel, PlannerConfig
    >>> from jgraph.pipeline.models import mmt
    >>> from jgraph.pipeline.planners import PLANNER_NAMES, assemble_plan
    >>> PLANNER_NAMES
    ('graphpipe', 'pipedream', 'piper', 'gpipe')
    >>> cm = CostModel(mmt(branches=2, layers=1), ClusterConfig(num_devices=2), PlannerConfig())
    >>> half = len(cm.nodes) // 2
    >>> stages = [list(range(half)), list(range(half, len(cm.nodes)))]
    >>> plan, _ = assemble_plan(cm, stages, [1, 1], micro_batch=2, batch=8, planner="by hand")
    >>> len(plan.stages), plan.planner
    (2, 'by hand')
"""

from jgraph.pipeline._config import SCHEDULE_KINDS as SCHEDULE_KINDS
from jgraph.pipeline._config import ScheduleKind as ScheduleKind
from jgraph.pipeline._plan import assemble_plan as assemble_plan
from jgraph.pipeline._planners import PLANNER_NAMES as PLANNER_NAMES
from jgraph.pipeline._planners import PlannerName as PlannerName

__all__ = ["PLANNER_NAMES", "SCHEDULE_KINDS", "PlannerName", "ScheduleKind", "assemble_plan"]
