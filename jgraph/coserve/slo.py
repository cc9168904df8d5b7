"""SLO-aware finetuning budgets: the step-time cost model, its profiler and cache, the
AIMD budget controller (``"coserve"``) and the baseline policies it is compared with
(``"inference_only"``, ``"finetune_only"``, ``"temporal"``, ``"static"``).

The engine calls ``policy.budget(...)`` once per step and ``policy.observe(...)`` after it;
see `jgraph.coserve._controller` for each mode's exact rule.

Example:
    >>> from jgraph.coserve.slo import SLOConfig, StepCostModel, make_policy
    >>> model = StepCostModel(intercept=0.01, per_inference_token=1e-4, per_ft_token=1e-4,
    ...                       backward=0.004)
    >>> policy = make_policy("coserve", token_budget=64, slo=SLOConfig(tpot_s=0.02, ttft_s=1.0),
    ...                      cost_model=model)
    >>> policy.budget(16, 0.0).ft_tokens
    48
"""

from jgraph.coserve._controller import POLICY_MODES as POLICY_MODES
from jgraph.coserve._controller import BudgetController as BudgetController
from jgraph.coserve._controller import BudgetPolicy as BudgetPolicy
from jgraph.coserve._controller import FinetuneBudget as FinetuneBudget
from jgraph.coserve._controller import PolicyMode as PolicyMode
from jgraph.coserve._controller import SLOConfig as SLOConfig
from jgraph.coserve._controller import make_policy as make_policy
from jgraph.coserve._cost import ProfileSample as ProfileSample
from jgraph.coserve._cost import StepCostModel as StepCostModel
from jgraph.coserve._cost import cache_path as cache_path
from jgraph.coserve._cost import default_profile_grid as default_profile_grid
from jgraph.coserve._cost import device_identity as device_identity
from jgraph.coserve._cost import load_or_profile as load_or_profile
from jgraph.coserve._cost import profile_step_time as profile_step_time

__all__ = [
    "POLICY_MODES",
    "BudgetController",
    "BudgetPolicy",
    "FinetuneBudget",
    "PolicyMode",
    "ProfileSample",
    "SLOConfig",
    "StepCostModel",
    "cache_path",
    "default_profile_grid",
    "device_identity",
    "load_or_profile",
    "make_policy",
    "profile_step_time",
]
