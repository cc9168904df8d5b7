"""The engine with a finetuning budget policy: the policy's inference cap, finetuning budget
and backward permission are honoured, it observes the measured step times, temporal sharing
alternates as hand-computed, and profiling the step-time model leaves the engine untouched."""

import jax
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.coserve.slo import FinetuneBudget, StepCostModel, make_policy

P1, P2 = [256, 72, 101, 108], [256, 9]
SAMPLE = [256, *range(30, 39)]  # 10 tokens: backward chunks 2, 1, 0 of 4 tokens


class FakePolicy:
    """Hands out scripted budgets; every `budget` call advances the fake clock by 0.25 s (the
    "step time" the engine should then measure)."""

    mode = "static"
    token_budget = 8

    def __init__(self, clock, budgets):
        self.clock, self.budgets = clock, list(budgets)
        self.calls, self.observed = [], []

    def budget(self, inference_tokens, oldest_wait_s=0.0, *, backward_pending=False):
        self.calls.append((inference_tokens, oldest_wait_s, backward_pending))
        self.clock.t += 0.25
        return self.budgets.pop(0)

    def observe(self, measured_step_s, *, inference_tokens, ft_tokens, backward):
        self.observed.append((measured_step_s, inference_tokens, ft_tokens, backward))


class Clock:
    def __init__(self):
        self.t, self.calls = 0.0, 0

    def __call__(self):
        self.calls += 1
        return self.t


@pytest.fixture
def clocked(engine, lora, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(engine, "_clock", clock)
    engine.reset(lora=lora, key=jax.random.key(5))
    yield engine, clock
    engine.set_policy(None)


def _shape(r):
    return (r.decode_tokens, r.prefill_tokens, r.ft_forward_tokens, r.bwd_chunk)


def _no_policy_outputs(engine, lora, prompts, new):
    engine.set_policy(None)
    engine.reset(lora=lora, key=jax.random.key(5))
    rids = [engine.submit(p, max_new_tokens=n) for p, n in zip(prompts, new, strict=True)]
    engine.run(max_steps=50)
    return [engine.result(r) for r in rids]


def test_fake_policy_caps_budgets_and_observes_measured_step_times(clocked, lora):
    engine, clock = clocked
    r0, r1 = engine.submit(P1, max_new_tokens=3), engine.submit(P2, max_new_tokens=2)
    engine.add_finetuning([SAMPLE])
    policy = FakePolicy(clock, [
        FinetuneBudget(1, True, 4),   # cap 4: P1's prompt only; 1 finetuning token
        FinetuneBudget(0, False, 0),  # a paused step: nothing runs
        FinetuneBudget(8, True, 8),   # capped by ft_tokens_per_step=6 and 8 - 3 rows: 5
        FinetuneBudget(4, False, 8),  # the forward completes, the backward is not allowed
        FinetuneBudget(0, True, 8),   # the backward runs (top chunk 2 of a 10-token sample)
    ])  # fmt: skip
    engine.set_policy(policy)
    clock.t = 1.5
    reports = [engine.step() for _ in range(5)]
    assert [_shape(r) for r in reports] == [
        (0, 4, 1, None),
        (0, 0, 0, None),
        (1, 2, 5, None),
        (2, 0, 4, None),
        (0, 0, 0, 2),
    ]
    # Uncapped the first step would prefill both prompts (4 + 2 = 6 inference tokens); P2
    # waits for its first token until step 3 (wait measured from submit at t = 0).
    assert policy.calls == [(6, 1.5, False), (3, 1.75, False), (3, 2.0, False),
                            (2, 0.0, False), (0, 0.0, True)]  # fmt: skip
    assert policy.observed == [(0.25, 4, 1, False), (0.25, 0, 0, False), (0.25, 3, 5, False),
                               (0.25, 2, 4, False), (0.25, 0, 0, True)]  # fmt: skip
    assert [r.step_s for r in reports] == [0.25] * 5
    assert reports[0].budget == FinetuneBudget(1, True, 4)
    assert engine.result(r0)
    assert engine.result(r1)
    got = [engine.result(r0), engine.result(r1)]
    # Pausing and capping only delays inference: the greedy outputs are unchanged.
    assert got == _no_policy_outputs(engine, lora, [P1, P2], [3, 2])


def test_without_a_policy_nothing_is_asked_and_the_budget_is_none(clocked):
    engine, _clock = clocked
    engine.submit(P1, max_new_tokens=2)
    r = engine.step()
    assert r.budget is None
    assert r.step_s == 0.0
    assert (r.prefill_tokens, r.ft_forward_tokens) == (4, 0)


def test_a_policy_for_another_token_budget_is_refused(engine):
    with pytest.raises(ConfigError, match="token_budget"):
        engine.set_policy(make_policy("temporal", token_budget=16))
    assert engine.policy is None


def test_temporal_sharing_alternates_inference_and_finetuning_steps(clocked, lora):
    engine, _ = clocked
    engine.set_policy(make_policy("temporal", token_budget=8, temporal_period=2))
    rid = engine.submit([256, 9], max_new_tokens=6)
    engine.add_finetuning([SAMPLE])
    reports = [engine.step() for _ in range(10)]
    # I, I, F, I, I, F, I, I (the request finishes), then finetuning only. Finetuning steps
    # carry min(6 = ft_tokens_per_step, forward left) tokens: 6, then the last 4 and the top
    # backward chunk; chunks 1 and 0 follow in the steps without inference work.
    assert [_shape(r) for r in reports] == [
        (0, 2, 0, None),
        (1, 0, 0, None),
        (0, 0, 6, None),
        (1, 0, 0, None),
        (1, 0, 0, None),
        (0, 0, 4, 2),
        (1, 0, 0, None),
        (1, 0, 0, None),
        (0, 0, 0, 1),
        (0, 0, 0, 0),
    ]
    assert [r.budget.inference_cap for r in reports[:6]] == [8, 8, 0, 8, 8, 0]
    assert reports[7].finished == (rid,)
    assert reports[9].sample_loss is not None
    assert engine.samples_done == 1
    assert engine.result(rid) == _no_policy_outputs(engine, lora, [[256, 9]], [6])[0]


def test_profile_cost_model_times_the_real_step_and_leaves_the_engine_alone(engine, lora, tmp_path):
    engine.reset(lora=lora, key=jax.random.key(5))
    rid = engine.submit(P1, max_new_tokens=4)
    engine.add_finetuning([SAMPLE])
    engine.step()
    k_before = np.asarray(engine.state.k_pages).copy()
    grid = [(1, 0, False), (6, 0, False), (1, 6, False), (1, 0, True), (4, 4, True)]
    model = engine.profile_cost_model(cache_dir=tmp_path, grid=grid, repeats=1, warmup=1)
    assert isinstance(model, StepCostModel)
    assert model.key["grid"] == [list(g) for g in grid]
    assert model.predict(8, 0, False) > 0
    # The engine's state was not donated or changed; serving continues as without profiling.
    np.testing.assert_array_equal(np.asarray(engine.state.k_pages), k_before)
    engine.run(max_steps=50)
    got = engine.result(rid)
    assert got == _no_policy_outputs(engine, lora, [P1], [4])[0]
    # A second call with the same setup reads the cache (no step is timed).
    calls = []
    engine._clock, real = (lambda: calls.append(1) or 0.0), engine._clock
    try:
        again = engine.profile_cost_model(cache_dir=tmp_path, grid=grid, repeats=1, warmup=1)
    finally:
        engine._clock = real
    assert again == model
    assert calls == []
    assert len(list(tmp_path.iterdir())) == 1
