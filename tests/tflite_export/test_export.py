"""Round trips through LiteRT: Linen, NNX and plain functions; names, files, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tflite_export as te
from jgraph.testing import TOLERANCES
from tests.tflite_export.conftest import CNN, IMAGE, MLP, NNXNet, _randomize_batchnorm

pytestmark = pytest.mark.tflite


def test_tolerance_defaults_are_the_cross_runtime_row() -> None:
    tol = TOLERANCES["cross_runtime"]["float32"]
    cfg = te.ExportConfig()
    assert (cfg.rtol, cfg.atol) == (tol.rtol, tol.atol)


def test_mlp_round_trip_and_identical_bytes(tmp_path) -> None:
    model = MLP()
    x = np.zeros((4, 12), np.float32)
    variables = model.init(jax.random.key(0), x)
    path = tmp_path / "mlp.tflite"
    a = te.export(model, (x,), variables=variables, path=path)
    b = te.export(model, (x,), variables=variables)
    assert a.data == b.data  # deterministic bytes
    assert path.read_bytes() == a.data
    assert a.parity is not None
    assert a.parity.passed
    assert a.parity.samples == 4
    assert a.ops.count("FULLY_CONNECTED") == 3
    assert a.model.signatures == {"serving_default": (("input",), ("output",))}
    # The parity check ran the model: feed it ourselves and compare with JAX.
    runner = a.runner()
    xr = np.random.default_rng(5).standard_normal((4, 12)).astype(np.float32)
    tol = TOLERANCES["cross_runtime"]["float32"]
    np.testing.assert_allclose(
        runner([xr])[0], model.apply(variables, xr), rtol=tol.rtol, atol=tol.atol
    )


def test_cnn_with_batchnorm_depthwise_grouped_pooling_residual() -> None:
    model = CNN()
    x = np.zeros(IMAGE, np.float32)
    variables = _randomize_batchnorm(model.init(jax.random.key(0), x), seed=4)
    res = te.export(model, (x,), variables=variables, apply_kwargs={"train": False})
    assert res.parity is not None
    assert res.parity.passed
    counts = res.model.op_counts
    assert counts["CONV_2D"] == 2
    assert counts["DEPTHWISE_CONV_2D"] == 1
    assert counts["MAX_POOL_2D"] == 1
    assert counts["AVERAGE_POOL_2D"] == 1
    # BatchNorm folded into the convs: the only ADD is the residual, and no MUL is left.
    assert counts["ADD"] == 1
    assert "MUL" not in counts
    assert res.model.non_builtin_ops == ()


def test_nnx_model_exports_in_eval_mode_and_leaves_the_model_alone() -> None:
    model = NNXNet(rngs=nnx.Rngs(0))
    model.train()
    res = te.export(model, (np.zeros((2, 8, 8, 3), np.float32),))
    assert res.parity is not None
    assert res.parity.passed
    assert "DROPOUT" not in " ".join(res.ops)
    assert model.drop.deterministic is False  # the caller's model is still in train mode
    model.eval()
    xr = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
    out = te.TFLiteRunner(res.data, "serving_default")([xr])[0]
    tol = TOLERANCES["cross_runtime"]["float32"]
    np.testing.assert_allclose(out, model(jnp.asarray(xr)), rtol=tol.rtol, atol=tol.atol)


def test_pytree_inputs_and_outputs_get_their_key_names() -> None:
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)

    def fn(batch):
        return {"logits": batch["x"] @ w, "norm": jnp.sum(batch["x"] ** 2, -1) + batch["bias"]}

    args = ({"x": np.zeros((2, 8), np.float32), "bias": np.zeros((2,), np.float32)},)
    res = te.export(fn, args, te.ExportConfig(signature="score"))
    assert res.input_names == ("bias", "x")  # jax.tree order (sorted keys)
    assert res.output_names == ("logits", "norm")
    assert res.model.signatures["score"] == (("bias", "x"), ("logits", "norm"))
    assert res.parity is not None
    assert res.parity.passed


def test_explicit_names_and_int_inputs() -> None:
    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    res = te.export(
        lambda ids, scale: jnp.asarray(table)[ids] * scale,
        (np.zeros((3,), np.int32), np.ones((3, 1), np.float32)),
        te.ExportConfig(input_names=("token_ids", "scale"), output_names=("embedding",)),
    )
    assert res.input_names == ("token_ids", "scale")
    # SavedModel stores a signature's names sorted; the runner feeds them by name.
    assert res.model.signatures["serving_default"] == (("scale", "token_ids"), ("embedding",))
    ids = np.array([3, 0, 9], np.int32)
    scale = np.array([[1.0], [2.0], [-1.0]], np.float32)
    np.testing.assert_array_equal(res.runner()([ids, scale])[0], table[ids] * scale)
    assert res.parity is not None
    assert res.parity.passed


def test_parity_check_catches_a_wrong_model() -> None:
    """Negative check: the comparison fails when the reference differs."""
    w = np.ones((4, 2), np.float32)
    res = te.export(lambda x: x @ w, (np.zeros((1, 4), np.float32),))
    runner = te.TFLiteRunner(res.data, "serving_default")
    from tflite_export._verify import compare

    batches = [[np.ones((1, 4), np.float32)]]
    got = [runner(b) for b in batches]
    bad = compare(got, lambda x: [x @ w * 1.001], batches, kind="allclose", rtol=1e-5, atol=1e-5)
    good = compare(got, lambda x: [x @ w], batches, kind="allclose", rtol=1e-5, atol=1e-5)
    assert good.passed
    assert not bad.passed
    assert bad.max_abs_error > 1e-3


def test_float_parity_failure_raises_with_the_numbers(monkeypatch) -> None:
    import tflite_export._export as ex

    real = ex.compare

    def skewed(got, reference, batches, **kw):
        return real(got, lambda *a: [o + 1.0 for o in reference(*a)], batches, **kw)

    monkeypatch.setattr(ex, "compare", skewed)
    w = np.ones((4, 2), np.float32)
    with pytest.raises(te.ParityError, match=r"max abs error 1, .*rtol=1e-05"):
        te.export(lambda x: x @ w, (np.zeros((1, 4), np.float32),))
    res = te.export(
        lambda x: x @ w, (np.zeros((1, 4), np.float32),), te.ExportConfig(verify="report")
    )
    assert res.parity is not None
    assert not res.parity.passed


def test_int8_modes_report_agreement_on_data() -> None:
    model = CNN()
    x = np.zeros(IMAGE, np.float32)
    variables = _randomize_batchnorm(model.init(jax.random.key(0), x), seed=4)
    data = np.random.default_rng(0).standard_normal((32, 8, 8, 3)).astype(np.float32)
    labels = np.asarray(jnp.argmax(model.apply(variables, data), -1))
    for mode in ("dynamic_int8", "full_int8"):
        res = te.export(
            model,
            (x,),
            te.ExportConfig(mode=mode),
            variables=variables,
            representative_data=data,
            data=data,
            labels=labels,
        )
        p = res.parity
        assert p is not None
        assert p.kind == "quantized"
        assert p.samples == 32
        assert p.jax_accuracy == 1.0  # the labels are the JAX model's own predictions
        assert p.top1_agreement == p.tflite_accuracy
        # int8 rounding moves logits a little, not a lot (statistical bound: 8-bit weights
        # on a 5-layer net with unit-scale inputs stay well within 0.5 of float logits).
        assert 0 < p.max_abs_error < 0.5
        assert p.top1_agreement >= 0.8
        assert any(t.dtype == "INT8" for t in res.model.weights)
    assert res.ops[0] == "QUANTIZE"
    assert res.ops[-1] == "DEQUANTIZE"


def test_float_export_reports_accuracy_on_labelled_data() -> None:
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    y = np.argmax(x @ w, -1)
    y[:2] = (y[:2] + 1) % 3  # two wrong labels: accuracy 6/8 for both models
    res = te.export(lambda a: a @ w, (x[:2],), data=x, labels=y)
    p = res.parity
    assert p is not None
    assert p.passed
    assert p.samples == 4 + 4  # parity_samples random sets, then the data's 4 batches
    assert p.tflite_accuracy == p.jax_accuracy == 0.75
    assert p.top1_agreement == 1.0
