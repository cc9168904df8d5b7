"""Benchmark helpers: timing blocks on JAX work, provenance is complete, JSON is written."""

import json
import time

import jax.numpy as jnp
import pytest

from jgraph.core import environment, format_table, time_call, write_results


def test_time_call_measures_the_work():
    t = time_call(time.sleep, 0.02, warmup=0, repeats=3)
    assert t.repeats == 3
    assert 0.02 <= t.min <= t.median <= t.max


def test_time_call_blocks_on_jax_outputs():
    x = jnp.ones((256, 256))
    t = time_call(lambda: x @ x, warmup=1, repeats=3)
    assert t.median > 0


def test_time_call_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats=0"):
        time_call(lambda: None, repeats=0)


def test_environment_fields():
    env = environment()
    for key in ("jax", "jaxlib", "backend", "device_kind", "cpu_model", "git_sha", "date_utc"):
        assert env[key], key


def test_write_results(tmp_path):
    path = write_results(
        tmp_path / "b.json", name="demo", rows=[{"n": 1, "ratio": 2.0}], smoke=True
    )
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demo"
    assert data["rows"] == [{"n": 1, "ratio": 2.0}]
    assert data["smoke"] is True
    assert data["environment"]["jax"]


def test_format_table_alignment_and_missing_cells():
    text = format_table([{"a": 1, "b": 0.5}, {"a": 22}], columns=["a", "b"])
    assert text.splitlines() == ["a   b", "1   0.5", "22"]
    assert format_table([]) == ""
