"""DGMS codebooks through export: K values in float, at most K int8 codes in codebook_int8."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tflite_export as te
from jgraph.core import ConfigError
from jgraph.quant import DGMSConfig, Hardened, dgms, harden
from tests.tflite_export.conftest import IMAGE, _randomize_batchnorm
from tflite_export._flatbuffer import load_model_t, tensor_array

pytestmark = pytest.mark.tflite


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *IMAGE[1:])).astype(np.float32)


def test_snap_codebooks_puts_every_value_on_the_int8_grid(cnn_hardened) -> None:
    _, hardened = cnn_hardened
    snapped = te.snap_codebooks(hardened)
    for name, book in snapped.codebooks.items():
        g = np.abs(book).max() / 127
        codes = book / g
        # The book is float32: a code up to 127 carries at most 127 * 2**-24 relative rounding
        # from the product q * g and as much again from dividing by g here.
        np.testing.assert_allclose(codes, np.rint(codes), rtol=0, atol=127 * 2.0**-23)
        assert book[0] == 0.0
        assert np.abs(np.rint(codes)).max() == 127
        # The snapped value is the nearest grid point to the learned one.
        assert np.abs(book - hardened.codebooks[name]).max() <= g / 2 + 1e-7
        kernel = snapped.variables["params"][name]["kernel"]
        np.testing.assert_array_equal(kernel, book[hardened.indices[name]])
    # The input is left alone.
    assert not np.array_equal(
        hardened.variables["params"]["Conv_2"]["kernel"],
        snapped.variables["params"]["Conv_2"]["kernel"],
    )


def test_float_export_keeps_k_values_per_channel(cnn_hardened) -> None:
    model, hardened = cnn_hardened
    res = te.export(model, (np.zeros(IMAGE, np.float32),), hardened=hardened)
    assert res.parity is not None
    assert res.parity.passed
    assert {c.layer for c in res.codebooks} == set(hardened.codebooks)
    for c in res.codebooks:
        assert c.stored == "FLOAT32"
        assert c.preserved
        assert c.distinct_per_channel <= c.k
    by_layer = {c.layer: c for c in res.codebooks}
    # The Dense layer has no BatchNorm: exactly its codebook's values, per tensor.
    assert by_layer["Dense_0"].distinct <= 16
    # Folded BatchNorm scales each output channel, so the tensor holds more than K values.
    assert by_layer["Conv_2"].distinct > 16
    assert res.size.packed is not None
    assert res.size.packed < res.size.raw


def _dequantized(data: bytes, tensor_name: str) -> np.ndarray:
    model = load_model_t(data)
    for t in model.subgraphs[0].tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        if name == tensor_name:
            codes = tensor_array(model, t)
            scale = np.asarray(t.quantization.scale, np.float64)
            shape = [1] * codes.ndim
            shape[int(t.quantization.quantizedDimension)] = -1
            return codes * scale.reshape(shape)
    raise KeyError(tensor_name)


def _float_tensor(data: bytes, tensor_name: str) -> np.ndarray:
    model = load_model_t(data)
    for t in model.subgraphs[0].tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        if name == tensor_name and t.quantization.scale is None:
            return tensor_array(model, t)
    raise KeyError(tensor_name)


def test_codebook_int8_stores_at_most_k_codes_and_the_exact_weights(cnn_hardened) -> None:
    model, hardened = cnn_hardened
    x = np.zeros(IMAGE, np.float32)
    data = _images(64)
    cb = te.export(model, (x,), te.ExportConfig(mode="codebook_int8"), hardened=hardened, data=data)
    again = te.export(
        model, (x,), te.ExportConfig(mode="codebook_int8", verify="skip"), hardened=hardened
    )
    assert again.data == cb.data  # the rewrite is deterministic too
    dyn = te.export(model, (x,), te.ExportConfig(mode="dynamic_int8"), hardened=hardened, data=data)
    flt = te.export(
        model, (x,), te.ExportConfig(verify="skip"), hardened=te.snap_codebooks(hardened)
    )
    cb_layers = {c.layer: c for c in cb.codebooks}
    dyn_layers = {c.layer: c for c in dyn.codebooks}
    # The two big layers are int8; the 288-weight depthwise conv is below the converter's
    # quantization threshold and stays float (reported, not hidden).
    for name in ("Conv_2", "Dense_0"):
        assert cb_layers[name].stored == "INT8"
        assert cb_layers[name].distinct <= 16
        assert cb_layers[name].preserved
        # The dequantized int8 weights are the float export's (folded) weights.
        tensor = cb_layers[name].tensor
        np.testing.assert_allclose(
            # Tighter than the cross-runtime row: both sides are the same float32 product
            # (code * scale vs the folded weight), not two runtimes' arithmetic.
            _dequantized(cb.data, tensor),
            _float_tensor(flt.data, tensor),
            rtol=1e-6,
            atol=1e-7,
        )
    assert cb_layers["Conv_1"].stored == "FLOAT32"
    assert not cb_layers["Conv_1"].preserved
    assert "too small" in cb_layers["Conv_1"].note
    # Negative check: the standard per-channel quantizer breaks the BatchNorm-folded codebook.
    assert dyn_layers["Conv_2"].stored == "INT8"
    assert dyn_layers["Conv_2"].distinct > 16
    assert not dyn_layers["Conv_2"].preserved
    # Same size as the standard int8 model; closer to the JAX model.
    assert abs(cb.size.raw - dyn.size.raw) < 1024
    assert cb.parity is not None
    assert dyn.parity is not None
    assert cb.parity.max_abs_error <= dyn.parity.max_abs_error
    assert cb.parity.top1_agreement is not None
    assert cb.parity.top1_agreement >= 0.95
    # Also compared with the model the user trained (unsnapped codebooks), on the same data.
    trained = cb.trained_parity
    assert trained is not None
    assert trained.samples == cb.parity.samples
    assert trained.max_abs_error != cb.parity.max_abs_error  # a different reference
    assert trained.top1_agreement is not None
    assert trained.top1_agreement >= 0.95
    assert dyn.trained_parity is None


def test_codebook_int8_with_negative_batchnorm_scale(cnn_hardened) -> None:
    """A negative folded factor flips that channel's codes: <= K per channel, reported."""
    model, hardened = cnn_hardened
    v = jax.tree.map(np.asarray, hardened.variables)
    scale = v["params"]["BatchNorm_2"]["scale"].copy()
    scale[:3] *= -1
    v["params"]["BatchNorm_2"]["scale"] = scale
    flipped = Hardened(v, hardened.codebooks, hardened.indices)
    res = te.export(
        model,
        (np.zeros(IMAGE, np.float32),),
        te.ExportConfig(mode="codebook_int8"),
        hardened=flipped,
    )
    layer = {c.layer: c for c in res.codebooks}["Conv_2"]
    assert layer.stored == "INT8"
    assert layer.distinct_per_channel <= 16
    assert layer.preserved
    assert layer.distinct > 16  # the flipped channels add the negated codes
    assert "negative" in layer.note


def test_codebook_int8_needs_the_snapped_weights_in_a_plain_function(cnn_hardened) -> None:
    model, hardened = cnn_hardened
    x = np.zeros(IMAGE, np.float32)

    def unsnapped(images):
        return model.apply(hardened.variables, images)

    with pytest.raises(ConfigError, match=r"snap_codebooks\(hardened\)\.variables"):
        te.export(unsnapped, (x,), te.ExportConfig(mode="codebook_int8"), hardened=hardened)
    snapped = te.snap_codebooks(hardened)

    def built_from_snapped(images):
        return model.apply(snapped.variables, images)

    res = te.export(
        built_from_snapped, (x,), te.ExportConfig(mode="codebook_int8"), hardened=hardened
    )
    assert {c.layer: c.distinct <= 16 for c in res.codebooks}["Conv_2"]


def test_nnx_dgms_model_every_layer_quantized(nnx_hardened) -> None:
    model, hardened = nnx_hardened
    x = np.zeros(IMAGE, np.float32)
    flt = te.export(model, (x,), hardened=hardened)
    assert flt.parity is not None
    assert flt.parity.passed
    assert all(c.distinct_per_channel <= 4 for c in flt.codebooks)
    cb = te.export(model, (x,), te.ExportConfig(mode="codebook_int8"), hardened=hardened)
    int8 = [c for c in cb.codebooks if c.stored == "INT8"]
    assert {c.layer for c in int8} == {"fc1"}  # the other kernels are under the threshold
    assert all(c.distinct <= 4 for c in int8)
    # The caller's NNX model keeps its unsnapped kernels.
    np.testing.assert_array_equal(
        model.fc1.kernel[...], hardened.codebooks["fc1"][hardened.indices["fc1"]]
    )


def test_full_int8_reports_codes_per_layer(cnn_hardened) -> None:
    model, hardened = cnn_hardened
    res = te.export(
        model,
        (np.zeros(IMAGE, np.float32),),
        te.ExportConfig(mode="full_int8"),
        hardened=hardened,
        representative_data=_images(16),
    )
    layers = {c.layer: c for c in res.codebooks}
    assert all(c.stored == "INT8" for c in layers.values())  # activations int8: every weight
    assert layers["Conv_2"].distinct > 16
    assert jnp.isfinite(res.parity.max_abs_error)


class _Depthwise(nn.Module):
    """A depthwise conv big enough to be quantized (1152 weights), its channels on the last axis."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(128, (1, 1))(x)
        x = nn.Conv(128, (3, 3), feature_group_count=128, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x)).mean(axis=(1, 2))
        return nn.Dense(10)(x)


def test_depthwise_codebook_on_the_last_axis() -> None:
    model = _Depthwise()
    x = np.zeros((1, 8, 8, 3), np.float32)
    fp = _randomize_batchnorm(model.init(jax.random.key(0), x), seed=5)
    cfg = DGMSConfig(bits=3, layers="Conv_1|Dense_0")
    hardened = harden(dgms(model, cfg).init(fp, x, key=jax.random.key(1)), cfg)
    res = te.export(model, (x,), te.ExportConfig(mode="codebook_int8"), hardened=hardened)
    assert "DEPTHWISE_CONV_2D" in res.ops
    layer = {c.layer: c for c in res.codebooks}["Conv_1"]
    assert layer.stored == "INT8"
    assert layer.distinct <= 8
    flt = te.export(
        model, (x,), te.ExportConfig(verify="skip"), hardened=te.snap_codebooks(hardened)
    )
    np.testing.assert_allclose(
        _dequantized(res.data, layer.tensor),
        _float_tensor(flt.data, layer.tensor),
        rtol=1e-6,
        atol=1e-7,
    )
