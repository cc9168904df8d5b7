"""Finetuning checkpoints refuse what would silently go wrong: saving into another job's
folder, restoring into a different engine, and damaged files (each named)."""

import dataclasses
import json
import shutil

import jax
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import CoServeEngine, LoraConfig, init_lora

SAMPLES = [[256, *range(i, i + 7)] for i in range(3)]


def _train(engine, lora, n):
    engine.reset(lora=lora, key=jax.random.key(0))
    engine.add_finetuning(SAMPLES)
    while engine.samples_done < n:
        engine.step()


@pytest.fixture(scope="module")
def saved(engine, cfg, lora_cfg, tmp_path_factory):
    """A folder with step 1 (one sample done)."""
    d = tmp_path_factory.mktemp("ckpt") / "job"
    _train(engine, init_lora(cfg, lora_cfg, key=jax.random.key(3)), 1)
    engine.save_finetuning(d)
    return d


def _copy(saved, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(saved, d)
    return d


def test_saving_into_a_folder_with_a_later_step_is_an_error(engine, cfg, lora_cfg, tmp_path):
    lora = init_lora(cfg, lora_cfg, key=jax.random.key(4))
    _train(engine, lora, 2)
    engine.save_finetuning(tmp_path / "a")  # step 2
    _train(engine, lora, 1)
    with pytest.raises(ConfigError, match=r"already holds checkpoint step 2 >= this job's step 1"):
        engine.save_finetuning(tmp_path / "a")
    engine.save_finetuning(tmp_path / "b")  # a folder of its own works
    assert engine.restore_finetuning(tmp_path / "a") == 2  # the other job's step is intact


def _other_engine(cfg, params, base, lora_cfg, bank, **changes):
    """An engine differing in one setting (restoring compiles nothing: no step runs)."""
    return CoServeEngine(
        cfg, params, dataclasses.replace(base, **changes.pop("scfg", {})),
        changes.pop("lcfg", lora_cfg), optimizer=changes.pop("optimizer", optax.sgd(0.3)),
        key=jax.random.key(0), bank=bank,
    )  # fmt: skip


def test_restore_checks_the_engine_matches(saved, engine, cfg, params, lora_cfg, bank):
    e = _other_engine(cfg, params, engine.scfg, lora_cfg, bank, scfg={"grad_accum": 3})
    with pytest.raises(ConfigError, match=r"restore_finetuning grad_accum=.*saved 2 vs 3"):
        e.restore_finetuning(saved)
    other_lora = LoraConfig(rank=4, alpha=4.0, targets=lora_cfg.targets)
    e = _other_engine(cfg, params, engine.scfg, lora_cfg, bank, lcfg=other_lora)
    with pytest.raises(ConfigError, match=r"restore_finetuning lora=.*alpha: saved 8.0 vs 4.0"):
        e.restore_finetuning(saved)
    e = _other_engine(cfg, params, engine.scfg, lora_cfg, bank, optimizer=optax.adam(1e-3))
    with pytest.raises(ConfigError, match=r"restore_finetuning optimizer/adapter state="):
        e.restore_finetuning(saved)
    # Negative check: the same settings restore (sgd with momentum, as the fixture's engine).
    e = _other_engine(cfg, params, engine.scfg, lora_cfg, bank,
                      optimizer=optax.sgd(0.3, momentum=0.9))  # fmt: skip
    assert e.restore_finetuning(saved) == 1


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("delete", r"host_1.json'?: is missing"),
        ("truncate", r"host_1.json'?: is not valid JSON"),
        ("malformed", r"host_1.json'?: lacks 'losses'"),
        ("not-an-object", r"host_1.json'?: is not a JSON object"),
    ],
)
def test_a_damaged_host_json_is_named(saved, engine, tmp_path, damage, match):
    d = _copy(saved, tmp_path)
    host = d / "host_1.json"
    if damage == "delete":
        host.unlink()
    elif damage == "truncate":
        host.write_text(host.read_text()[:40])
    elif damage == "malformed":
        host.write_text(json.dumps({**json.loads(host.read_text()), "losses": "x"}))
    else:
        host.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=match):
        engine.restore_finetuning(d)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_array_file_is_named(saved, engine, tmp_path, damage):
    d = _copy(saved, tmp_path)
    data_files = [p for p in (d / "1").rglob("*") if p.is_file() and p.parent.name == "d"]
    f = max(data_files, key=lambda p: p.stat().st_size)
    raw = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        f.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        f.unlink()
    what = {
        "truncate": "is truncated",
        "flip": "does not match its checksum",
        "delete": "is missing",
    }
    with pytest.raises(ConfigError, match=f"{f.name}'?: {what[damage]}"):
        engine.restore_finetuning(d)
