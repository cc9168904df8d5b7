"""Several finetuning jobs on one engine: round-robin turns, per-job gradient accumulation and
learning rate (data in the optimizer state, one compiled step), each job trained exactly as
alone, cancellation and per-job checkpoints."""

import jax
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import init_lora
from jgraph.coserve._accumulate import accumulate, set_job_settings
from jgraph.coserve._ft_jobs import FinetuneJob, FinetuneJobs
from jgraph.coserve.reference import plain_lora_train
from jgraph.testing import assert_no_recompile, assert_trees_close


def test_pick_is_round_robin_over_jobs_with_work():
    jobs = FinetuneJobs(FinetuneJob(name="a", grad_accum=1, lr_multiplier=1.0))
    for n in "bc":
        jobs.add(FinetuneJob(name=n, grad_accum=1, lr_multiplier=1.0))
    assert jobs.pick() == "a"  # nobody has work: stay
    jobs.get("c").cursor.samples.append([1, 2])
    jobs.get("a").cursor.samples.append([1, 2])
    assert jobs.pick() == "c"  # after a: b (idle), then c
    jobs.active = "c"
    assert jobs.pick() == "a"  # wraps around
    jobs.get("a").cursor.samples.clear()
    assert jobs.pick() == "c"  # only the active one has work
    with pytest.raises(ConfigError, match="is active"):
        jobs.remove("c")
    with pytest.raises(ConfigError, match="exists already"):
        jobs.add(FinetuneJob(name="b", grad_accum=1, lr_multiplier=1.0))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_accumulate_matches_optax_multisteps(k):
    params = {"w": np.zeros((3, 2), np.float32)}
    grads = [{"w": np.random.default_rng(i).normal(size=(3, 2)).astype(np.float32)}
             for i in range(7)]  # fmt: skip
    inner = optax.sgd(0.1, momentum=0.9)
    ours, ref = accumulate(inner, every_k=k), optax.MultiSteps(inner, every_k_schedule=k)
    s1, s2, p1, p2 = ours.init(params), ref.init(params), params, params
    for g in grads:
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = ref.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        assert_trees_close(p1, p2, kind="gradient")
    assert int(s1.mini_step) == len(grads) % k


@pytest.mark.parametrize("inner", [optax.sgd, optax.adam])
def test_lr_multiplier_is_a_learning_rate_factor(inner):
    params = {"w": np.ones(4, np.float32)}
    scaled = accumulate(inner(0.1))
    s1 = set_job_settings(scaled.init(params), every_k=2, lr_scale=0.5)
    plain = optax.MultiSteps(inner(0.05), every_k_schedule=2)
    s2 = plain.init(params)
    p1 = p2 = params
    for i in range(6):
        g = {"w": np.full(4, 1.0 + i, np.float32)}
        u1, s1 = scaled.update(g, s1, p1)
        u2, s2 = plain.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    assert_trees_close(p1, p2, kind="gradient")
    assert not np.allclose(np.asarray(p1["w"]), 1.0)  # it moved
    with pytest.raises(ConfigError, match="learning_rate_multiplier"):
        set_job_settings(s1, every_k=1, lr_scale=0.0)
    with pytest.raises(ConfigError, match="grad_accum"):
        set_job_settings(s1, every_k=0)


def _samples(seed, n):
    rng = np.random.default_rng(seed)
    base = [256, *rng.integers(0, 256, 11).tolist()]
    return [base[: 7 + (i % 4)] for i in range(n)]


def test_two_jobs_take_turns_and_each_trains_as_if_alone(engine, cfg, params, lora_cfg):
    lora_a = init_lora(cfg, lora_cfg, key=jax.random.key(31))
    lora_b = init_lora(cfg, lora_cfg, key=jax.random.key(32), b_std=0.05)
    sa, sb = _samples(1, 4), _samples(2, 3)
    engine.reset(lora=lora_a, key=jax.random.key(0))
    engine.submit([256, 7, 8], max_new_tokens=2)
    engine.step()  # compile outside the no-recompile block (a no-op if already compiled)
    with assert_no_recompile("co-serving step"):
        engine.add_job("b", lora=lora_b, grad_accum=1, learning_rate_multiplier=0.5)
        engine.add_finetuning(sa)  # the default job: grad_accum=2 from CoServeConfig
        engine.add_finetuning(sb, job="b")
        for i in range(3):
            engine.submit([256, 1 + i, 2], max_new_tokens=4)
        reports = engine.run(max_steps=800)
    assert engine.idle
    done = [r.ft_job for r in reports if r.sample_loss is not None]
    # between samples the next job after the active one (default) with work goes: b first
    assert done == ["b", "default", "b", "default", "b", "default", "default"]
    info = engine.jobs
    assert (info["default"].updates, info["b"].updates) == (2, 3)
    assert info["b"].forward_tokens == sum(len(s) for s in sb)
    # each job equals its plain training loop (its own lr and accumulation)
    la, fa = plain_lora_train(cfg, params, lora_a, lora_cfg, optax.sgd(0.3, momentum=0.9), sa,
                              grad_accum=2)  # fmt: skip
    lb, fb = plain_lora_train(cfg, params, lora_b, lora_cfg, optax.sgd(0.15, momentum=0.9), sb)
    assert_trees_close(np.float32(info["default"].losses), np.float32(la), kind="gradient")
    assert_trees_close(np.float32(info["b"].losses), np.float32(lb), kind="gradient")
    assert_trees_close(engine.trainable_adapter("default"), fa, kind="gradient")
    assert_trees_close(engine.trainable_adapter("b"), fb, kind="gradient")
    # negative: b's adapter is not what the engine-wide learning rate would give
    _, wrong = plain_lora_train(cfg, params, lora_b, lora_cfg, optax.sgd(0.3, momentum=0.9), sb)
    with pytest.raises(AssertionError):
        assert_trees_close(engine.trainable_adapter("b"), wrong, kind="gradient")


def test_cancel_mid_sample_and_per_job_checkpoint(engine, cfg, params, lora_cfg, tmp_path):
    lora_a = init_lora(cfg, lora_cfg, key=jax.random.key(41))
    lora_b = init_lora(cfg, lora_cfg, key=jax.random.key(42))
    sa, sb = _samples(4, 2), _samples(3, 2)
    engine.reset(lora=lora_a, key=jax.random.key(0))
    engine.add_job("b", lora=lora_b, grad_accum=1)
    engine.add_finetuning(sa)
    engine.add_finetuning(_samples(6, 2), job="b")
    engine.step()  # b's first sample is in flight (b comes after the active default job)
    assert engine.jobs["b"].active
    assert engine.jobs["b"].forward_tokens > 0
    engine.cancel_job("b")
    with pytest.raises(ConfigError, match="is the default job"):
        engine.remove_job("default")
    engine.run(max_steps=400)
    assert engine.jobs["b"].samples_done == 0
    # the default job is exact: nothing of b's aborted sample leaked into its losses
    la, _ = plain_lora_train(cfg, params, lora_a, lora_cfg, optax.sgd(0.3, momentum=0.9), sa,
                             grad_accum=2)  # fmt: skip
    assert_trees_close(np.float32(engine.losses), np.float32(la), kind="gradient")
    engine.add_finetuning(sb, job="b")  # b resumes from its untouched adapter
    engine.run(max_steps=400)
    lb, fb = plain_lora_train(cfg, params, lora_b, lora_cfg, optax.sgd(0.3, momentum=0.9), sb)
    assert_trees_close(np.float32(engine.jobs["b"].losses), np.float32(lb), kind="gradient")
    engine.add_finetuning(_samples(5, 1))  # the default job becomes active again
    engine.run(max_steps=400)
    assert not engine.jobs["b"].active
    engine.save_finetuning(tmp_path / "b", job="b")  # saved from its stash
    engine.reset(lora=lora_a, key=jax.random.key(0))
    engine.add_job("b", grad_accum=1)
    assert engine.restore_finetuning(tmp_path / "b", job="b") == 2
    assert_trees_close(engine.trainable_adapter("b"), fb, kind="gradient")
    engine.reset(lora=lora_a, key=jax.random.key(0))
    engine.add_job("b", grad_accum=3)
    with pytest.raises(ConfigError, match="grad_accum"):
        engine.restore_finetuning(tmp_path / "b", job="b")
    with pytest.raises(ConfigError, match="does not exist"):
        engine.add_finetuning(sb, job="nope")
    engine.remove_job("b")
    assert set(engine.jobs) == {"default"}
