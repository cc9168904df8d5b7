"""Finetuning budget policies: the SLO-aware controller and the baselines it is compared with.

Every policy answers one question per step: given the inference tokens the scheduler wants to
run (``inference_tokens``, decode plus prefill chunks, inference always first) and how long
the oldest waiting prompt has waited, how many finetuning forward tokens may this step carry,
may it run a backward step, and how many inference tokens may it run (`FinetuneBudget`)? The
engine calls `budget` exactly once per step (policies with a schedule count steps there) and
`observe` after the step with what actually ran and the measured wall time.

Modes (`PolicyMode`; B = the step's token budget, n = ``min(inference_tokens, B)``):

* ``"coserve"`` (`BudgetController`, spec §a.6): finetuning gets the largest token budget
  whose predicted step time (a `StepCostModel` plus a feedback bias) stays under
  ``tpot_s * (1 - margin)``, a backward step when it fits too (decided first: it unblocks the
  next sample), and never more than an AIMD allowance; nothing at all while the oldest
  waiting prompt has waited more than ``ttft_guard * ttft_s``; everything (B tokens and the
  backward step) in a step without inference tokens, where no TPOT is at stake (such steps
  are not fed back either). Inference is never capped.
* ``"inference_only"``: finetuning gets nothing.
* ``"finetune_only"``: inference gets nothing (cap 0); finetuning gets all B tokens and every
  backward step (the peak-finetuning reference; run it without inference load).
* ``"temporal"`` with period N (FlexLLM's temporal sharing, one engine step per turn): a step
  with inference work (n > 0) is an inference step (finetuning gets nothing) until N such steps
  have run since the last finetuning step; the next step with inference work is a finetuning
  step instead: inference cap 0, finetuning gets B tokens and the backward. A step without
  inference work is also a finetuning step (the device would idle otherwise). Every finetuning
  step restarts the count. With N = 2 and inference always present: I, I, F, I, I, F, ...
* ``"static"`` with K tokens (a fixed split, not work-conserving): finetuning always gets K
  tokens and every backward step; inference is capped at B - K.

AIMD in the controller: the allowance is seconds of predicted finetuning time per step
(``c_ft * n_ft + c_bwd * bwd``). A measured step slower than ``tpot_s`` that carried finetuning
work cuts it to ``aimd_decrease`` times the finetuning time of that step (multiplicative
decrease); any other step adds ``aimd_increase * tpot_s`` (additive increase, up to the
target). Separately, an EWMA of measured minus predicted step time is added to every
prediction, so a biased profile or a lasting slowdown shifts the budget rather than causing
repeated violations. A violation caused by inference alone (no finetuning work in the step)
leaves the allowance unchanged: giving finetuning less would not have helped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Literal, Protocol, get_args

from jgraph.core import ConfigError, check_choice, check_int, check_number
from jgraph.coserve._cost import StepCostModel

__all__ = [
    "POLICY_MODES",
    "BudgetController",
    "BudgetPolicy",
    "FinetuneBudget",
    "PolicyMode",
    "SLOConfig",
    "make_policy",
]

log = logging.getLogger(__name__)

PolicyMode = Literal["coserve", "inference_only", "finetune_only", "temporal", "static"]
POLICY_MODES: tuple[str, ...] = get_args(PolicyMode)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLOConfig:
    """Latency targets and the controller's knobs.

    Attributes:
        tpot_s: time-per-output-token target, seconds (one decode step's wall time).
        ttft_s: time-to-first-token target, seconds, counted from arrival.
        ttft_guard: finetuning gets nothing while the oldest waiting prompt has waited more than
            ``ttft_guard * ttft_s`` (0 < guard <= 1).
        margin: the controller aims at ``tpot_s * (1 - margin)``, headroom for noise.
        aimd_increase: additive increase of the finetuning allowance per step on target, as a
            fraction of ``tpot_s``.
        aimd_decrease: multiplicative decrease factor applied on a violation (0 <= f < 1).
        bias_ewma: weight of the newest measurement in the EWMA of the prediction error.
        slack_steps: TPOT is a per-request average (the time between a request's first and
            last token over its tokens), so time saved by steps under the target may be spent
            by a later, longer step (e.g. one with a backward step that alone would not fit):
            the controller banks ``target - measured`` per step, within ``+-slack_steps *
            target``. 0: every step must fit on its own.
    """

    tpot_s: float
    ttft_s: float
    ttft_guard: float = 0.5
    margin: float = 0.1
    aimd_increase: float = 0.02
    aimd_decrease: float = 0.5
    bias_ewma: float = 0.1
    slack_steps: float = 2.0

    def __post_init__(self) -> None:
        check_number("SLOConfig.tpot_s", self.tpot_s, minimum=0.0, strict_minimum=True)
        check_number("SLOConfig.ttft_s", self.ttft_s, minimum=0.0, strict_minimum=True)
        check_number(
            "SLOConfig.ttft_guard", self.ttft_guard, minimum=0.0, maximum=1.0, strict_minimum=True
        )
        check_number("SLOConfig.margin", self.margin, minimum=0.0, maximum=0.9)
        check_number(
            "SLOConfig.aimd_increase",
            self.aimd_increase,
            minimum=0.0,
            maximum=1.0,
            strict_minimum=True,
        )
        check_number("SLOConfig.aimd_decrease", self.aimd_decrease, minimum=0.0, maximum=0.99)
        check_number(
            "SLOConfig.bias_ewma", self.bias_ewma, minimum=0.0, maximum=1.0, strict_minimum=True
        )
        check_number("SLOConfig.slack_steps", self.slack_steps, minimum=0.0, maximum=100.0)

    @property
    def target_s(self) -> float:
        """The step time the controller plans for: ``tpot_s * (1 - margin)``."""
        return self.tpot_s * (1.0 - self.margin)


@dataclasses.dataclass(frozen=True)
class FinetuneBudget:
    """One step's decision.

    Attributes:
        ft_tokens: most finetuning forward tokens this step may carry.
        allow_backward: whether a pending backward step may run.
        inference_cap: most inference tokens this step may carry (the token budget when
            inference is not limited, 0 when it is paused).
    """

    ft_tokens: int
    allow_backward: bool
    inference_cap: int


class BudgetPolicy(Protocol):
    """What the engine needs from a policy (see the module docstring)."""

    mode: PolicyMode
    token_budget: int

    def budget(
        self, inference_tokens: int, oldest_wait_s: float = 0.0, *, backward_pending: bool = False
    ) -> FinetuneBudget: ...

    def observe(
        self, measured_step_s: float, *, inference_tokens: int, ft_tokens: int, backward: bool
    ) -> None: ...


def _check_step(inference_tokens: int, oldest_wait_s: float) -> None:
    check_int("inference_tokens", inference_tokens, minimum=0)
    check_number("oldest_wait_s", oldest_wait_s, minimum=0.0)


class _Baseline:
    """Shared plumbing of the fixed policies (they ignore measurements)."""

    mode: PolicyMode

    def __init__(self, token_budget: int) -> None:
        self.token_budget = check_int("token_budget", token_budget, minimum=1)

    def observe(
        self, measured_step_s: float, *, inference_tokens: int, ft_tokens: int, backward: bool
    ) -> None:
        del measured_step_s, inference_tokens, ft_tokens, backward


class _InferenceOnly(_Baseline):
    mode: PolicyMode = "inference_only"

    def budget(
        self, inference_tokens: int, oldest_wait_s: float = 0.0, *, backward_pending: bool = False
    ) -> FinetuneBudget:
        _check_step(inference_tokens, oldest_wait_s)
        return FinetuneBudget(0, False, self.token_budget)


class _FinetuneOnly(_Baseline):
    mode: PolicyMode = "finetune_only"

    def budget(
        self, inference_tokens: int, oldest_wait_s: float = 0.0, *, backward_pending: bool = False
    ) -> FinetuneBudget:
        _check_step(inference_tokens, oldest_wait_s)
        return FinetuneBudget(self.token_budget, True, 0)


class _Temporal(_Baseline):
    mode: PolicyMode = "temporal"

    def __init__(self, token_budget: int, period: int) -> None:
        super().__init__(token_budget)
        self.period = check_int("temporal_period", period, minimum=1)
        self.inference_steps = 0  # inference steps since the last finetuning step

    def budget(
        self, inference_tokens: int, oldest_wait_s: float = 0.0, *, backward_pending: bool = False
    ) -> FinetuneBudget:
        _check_step(inference_tokens, oldest_wait_s)
        if inference_tokens > 0 and self.inference_steps < self.period:
            self.inference_steps += 1
            return FinetuneBudget(0, False, self.token_budget)
        self.inference_steps = 0
        return FinetuneBudget(self.token_budget, True, 0)


class _Static(_Baseline):
    mode: PolicyMode = "static"

    def __init__(self, token_budget: int, ft_tokens: int) -> None:
        super().__init__(token_budget)
        self.ft_tokens = check_int(
            "static_ft_tokens",
            ft_tokens,
            minimum=0,
            maximum=token_budget,
            fix=f"use 0 <= static_ft_tokens <= token_budget={token_budget}",
        )

    def budget(
        self, inference_tokens: int, oldest_wait_s: float = 0.0, *, backward_pending: bool = False
    ) -> FinetuneBudget:
        _check_step(inference_tokens, oldest_wait_s)
        return FinetuneBudget(self.ft_tokens, True, self.token_budget - self.ft_tokens)


class BudgetController:
    """The SLO-aware ``"coserve"`` policy (see the module docstring).

    Args:
        slo: targets and knobs.
        cost_model: the profiled step-time model of this backend and step config.
        token_budget: B, rows of one step.

    Example:
        >>> model = StepCostModel(intercept=0.010, per_inference_token=1e-4,
        ...                       per_ft_token=1e-4, backward=0.004)
        >>> ctl = BudgetController(SLOConfig(tpot_s=0.02, ttft_s=1.0), model, token_budget=64)
        >>> ctl.budget(16, 0.0, backward_pending=True)  # 0.018 - 0.0116 - 0.004 s left for ft
        FinetuneBudget(ft_tokens=24, allow_backward=True, inference_cap=64)
        >>> ctl.budget(16, 0.9)                           # a prompt waited > 0.5 * TTFT
        FinetuneBudget(ft_tokens=0, allow_backward=False, inference_cap=64)
    """

    mode: PolicyMode = "coserve"

    def __init__(self, slo: SLOConfig, cost_model: StepCostModel, *, token_budget: int) -> None:
        if not isinstance(slo, SLOConfig):
            raise ConfigError(
                "slo", slo, "must be an SLOConfig", "pass SLOConfig(tpot_s=..., ttft_s=...)"
            )
        if not isinstance(cost_model, StepCostModel):
            raise ConfigError(
                "cost_model", cost_model, "must be a StepCostModel", "fit or load one"
            )
        self.slo = slo
        self.model = cost_model
        self.token_budget = check_int("token_budget", token_budget, minimum=1)
        self.bias_s = 0.0  # EWMA of measured - predicted step time
        self.allowance_s = slo.target_s  # AIMD allowance of finetuning time per step
        self.slack_s = 0.0  # banked time: target - measured, summed (SLOConfig.slack_steps)
        self.steps = 0
        self.violations = 0

    def budget(
        self, inference_tokens: int, oldest_wait_s: float = 0.0, *, backward_pending: bool = False
    ) -> FinetuneBudget:
        _check_step(inference_tokens, oldest_wait_s)
        b = self.token_budget
        if oldest_wait_s > self.slo.ttft_guard * self.slo.ttft_s:
            return FinetuneBudget(0, False, b)
        if inference_tokens == 0:
            # No request decodes or prefills this step: no TPOT to protect (a prompt arriving
            # meanwhile waits at most one step, and the TTFT guard above covers waiting).
            return FinetuneBudget(b, backward_pending, b)
        n_inf = min(inference_tokens, b)
        base = self.model.predict(n_inf, 0, False) + self.bias_s
        headroom = min(self.slo.target_s - base + self.slack_s, self.allowance_s)
        allow_bwd = backward_pending and self.model.backward <= headroom
        if allow_bwd:
            headroom -= self.model.backward
        free = b - n_inf
        if headroom < 0:
            n_ft = 0
        elif self.model.per_ft_token == 0:
            n_ft = free
        else:
            # The epsilon keeps an exact fit (e.g. 0.0024 / 1e-4) from rounding down to n - 1.
            n_ft = min(free, math.floor(headroom / self.model.per_ft_token + 1e-9))
        return FinetuneBudget(n_ft, allow_bwd, b)

    def observe(
        self, measured_step_s: float, *, inference_tokens: int, ft_tokens: int, backward: bool
    ) -> None:
        check_number("measured_step_s", measured_step_s, minimum=0.0)
        check_int("inference_tokens", inference_tokens, minimum=0)
        check_int("ft_tokens", ft_tokens, minimum=0)
        slo, m = self.slo, self.model
        self.steps += 1
        if inference_tokens == 0:
            return  # a finetuning-only step: no target, and not the model's inference regime
        residual = measured_step_s - m.predict(inference_tokens, ft_tokens, backward)
        self.bias_s += slo.bias_ewma * (residual - self.bias_s)
        ft_time = m.per_ft_token * ft_tokens + m.backward * float(backward)
        banked, cap = self.slack_s, slo.slack_steps * slo.target_s
        self.slack_s = min(max(banked + slo.target_s - measured_step_s, -cap), cap)
        if measured_step_s <= slo.tpot_s + max(banked, 0.0):
            self.allowance_s = min(self.allowance_s + slo.aimd_increase * slo.tpot_s, slo.target_s)
            return
        self.violations += 1
        if ft_tokens > 0 or backward:
            self.allowance_s = slo.aimd_decrease * min(self.allowance_s, ft_time)
            log.debug(
                "step %.4f s > TPOT %.4f s: allowance %.5f s",
                measured_step_s,
                slo.tpot_s,
                self.allowance_s,
            )


def make_policy(
    mode: PolicyMode,
    *,
    token_budget: int,
    slo: SLOConfig | None = None,
    cost_model: StepCostModel | None = None,
    temporal_period: int = 8,
    static_ft_tokens: int | None = None,
) -> BudgetPolicy:
    """Builds the policy of ``mode`` (see the module docstring for each).

    Args:
        mode: one of `POLICY_MODES`.
        token_budget: B, rows of one step.
        slo: targets (``"coserve"`` only).
        cost_model: step-time model (``"coserve"`` only).
        temporal_period: N, inference steps between finetuning steps (``"temporal"``).
        static_ft_tokens: K, finetuning tokens of every step (``"static"``; default B // 4).

    Example:
        >>> p = make_policy("temporal", token_budget=32, temporal_period=2)
        >>> [p.budget(4).inference_cap for _ in range(4)]
        [32, 32, 0, 32]
    """
    check_choice("mode", mode, POLICY_MODES)
    check_int("token_budget", token_budget, minimum=1)
    if mode == "coserve":
        if slo is None or cost_model is None:
            raise ConfigError(
                "mode", mode, "needs slo and cost_model", "pass both, or pick a baseline mode"
            )
        return BudgetController(slo, cost_model, token_budget=token_budget)
    if mode == "inference_only":
        return _InferenceOnly(token_budget)
    if mode == "finetune_only":
        return _FinetuneOnly(token_budget)
    if mode == "temporal":
        return _Temporal(token_budget, temporal_period)
    k = token_budget // 4 if static_ft_tokens is None else static_ft_tokens
    return _Static(token_budget, k)
