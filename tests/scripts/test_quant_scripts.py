"""scripts/bench_quant_vs_tfmot.py: the verdict rule, the MNIST-5k loader, the report when
tfmot is missing, and (where the tfmot extra is installed) the Keras mirror and clustering."""

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_quant_vs_tfmot.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quant_vs_tfmot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


SMALL = [0.1, 0.3, 0.2, 0.0, 0.2]  # drops in points, five seeds
LARGE = [2.0, 2.6, 1.8, 2.3, 2.1]


def test_verdict_separates_wins_losses_and_ties_by_welch_p(bench):
    verdict, p = bench.verdict(SMALL, LARGE)
    assert verdict == "DGMS wins"
    assert p == pytest.approx(stats.ttest_ind(SMALL, LARGE, equal_var=False).pvalue)
    assert p < bench.ALPHA
    assert bench.verdict(LARGE, SMALL)[0] == "DGMS loses"
    # A 0.4-point gap inside a 1-point seed spread is not a win.
    noisy = [0.0, 1.5, -0.5, 1.0, 0.5]
    shifted = [x + 0.4 for x in noisy]
    verdict, p = bench.verdict(noisy, shifted)
    assert (verdict, p > bench.ALPHA) == ("tie", True)


def test_verdict_edge_cases(bench):
    assert bench.verdict([0.5], LARGE) == ("n/a", None)
    assert bench.verdict([1.0, 1.0, 1.0], [1.0, 1.0]) == ("tie", 1.0)
    # Zero spread on both sides: Welch is undefined, the sign decides.
    assert bench.verdict([0.0, 0.0], [3.0, 3.0])[0] == "DGMS wins"
    assert bench.verdict([3.0, 3.0], [0.0, 0.0])[0] == "DGMS loses"


def _fake_mnist(path: Path, per_class: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), per_class)
    x = rng.integers(0, 256, size=(len(y), 784))
    with gzip.open(path, "wt") as f:
        np.savetxt(f, np.column_stack([x, y]), fmt="%d", delimiter=",")
    return y


def test_mnist5k_loader_splits_stratified_and_standardizes(bench, tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    _fake_mnist(path, per_class=8)
    data = bench.load_mnist5k(path)
    assert data.x_train.shape == (60, 28, 28, 1)
    assert data.x_test.shape == (20, 28, 28, 1)
    assert np.bincount(data.y_test).tolist() == [2] * 10  # 25% of every class
    assert abs(float(data.x_train.mean())) < 1e-4
    assert float(data.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    small = bench.load_mnist5k(path, limit=4)
    assert len(small.x_train) + len(small.x_test) == 40
    assert np.bincount(small.y_train).tolist() == [3] * 10


def test_batches_follow_jgraph_epoch_order(bench):
    idx = bench.epoch_batches(10, 4, seed=3, epoch=2)
    assert idx.tolist() == np.random.default_rng([3, 2]).permutation(10)[:8].tolist()
    assert len(bench.epoch_batches(10, 64, seed=0, epoch=0)) == 10  # batch capped at n


def test_missing_tfmot_is_reported_not_fatal(bench, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        bench.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow_model_optimization" else real(name, *a),
    )
    note = bench.tfmot_status()
    assert note == "not installed (pip install -e .[tfmot])"
    setting = bench.Setting("s", "digits", None, (4,))
    runs = [
        {"k": 4, "method": "DGMS", "accuracy": a, "fp_accuracy": 0.98, "distinct": {"c": 4}}
        for a in (0.97, 0.975)
    ]
    rows, verdicts = bench.summarize(setting, runs, note)
    dgms = next(r for r in rows if r["method"] == "DGMS")
    assert dgms["drop_pt"] == pytest.approx(0.75)
    assert dgms["max_distinct"] == 4
    peers = [r for r in rows if r["method"].startswith("tfmot")]
    assert [r["note"] for r in peers] == [note, note]
    assert all("acc_%" not in r for r in peers)
    assert [v["verdict"] for v in verdicts] == [f"n/a: tfmot {note}"] * 2


def test_keras_mirror_matches_flax_and_clustering_keeps_k_values(bench):
    # Runs only where the optional tfmot extra is installed. CI installs `.[all]` only: the extra
    # would replace tensorflow-cpu with tensorflow and downgrade absl-py/chex (pyproject.toml),
    # so it cannot share CI's environment; the script's smoke run still tests the DGMS side there.
    pytest.importorskip("tensorflow_model_optimization", reason="needs .[tfmot]")
    assert bench.tfmot_status() is None
    import jax

    from jgraph import quant

    data = quant.recipes.load_dataset("digits")
    model = quant.recipes.make_model("cnn", data.num_classes)
    variables = model.init(jax.random.key(0), data.x_train[:2], train=False)
    # Non-trivial BatchNorm statistics, so a mis-copied mean/var would show.
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda a: np.asarray(a) + rng.normal(0, 0.1, a.shape).astype(np.float32), variables
    )
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    keras_model = bench.keras_cnn(variables["params"], data.x_train.shape[1:], 10)
    bench.copy_weights(keras_model, variables)
    want = np.asarray(model.apply(variables, data.x_test[:64], train=False))
    got = bench.keras_logits(keras_model, data.x_test[:64])
    assert np.max(np.abs(want - got)) < bench.PARITY_ATOL
    assert np.max(np.abs(want)) > 10 * bench.PARITY_ATOL  # the check is not vacuous

    small = quant.recipes.Dataset(
        name="digits[:128]",
        x_train=data.x_train[:128],
        y_train=data.y_train[:128],
        x_test=data.x_test[:64],
        y_test=data.y_test[:64],
        classes=data.classes,
    )
    out = bench.run_tfmot(
        keras_model,
        small,
        layers=("conv2", "fc1"),
        k=4,
        init="linear",
        recipe=quant.recipes.Recipe(epochs=1),
        lr=1e-4,
        seed=0,
    )
    assert set(out["distinct"]) == {"conv2", "fc1"}
    assert all(1 < v <= 4 for v in out["distinct"].values())
    assert 0.0 <= out["accuracy"] <= 1.0
    # The FP model it started from is untouched (run_tfmot clusters a copy).
    assert np.max(np.abs(bench.keras_logits(keras_model, data.x_test[:64]) - got)) == 0.0
