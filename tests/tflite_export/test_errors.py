"""Bad input is refused before conversion, by name; unsupported ops are named with their line."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tflite_export as te
import tflite_export._convert as convert_module
import tflite_export._export as export_module
from jgraph.core import ConfigError
from tests.tflite_export.conftest import MLP

pytestmark = pytest.mark.tflite

W = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
X = np.zeros((2, 8), np.float32)


@pytest.fixture
def no_conversion(monkeypatch):
    """Fails the test if anything reaches the converter."""

    def refuse(*args, **kwargs):
        raise AssertionError("conversion started for an input that should have been refused")

    monkeypatch.setattr(export_module, "convert", refuse)


def test_unsupported_op_names_the_op_and_the_source_line() -> None:
    def fn(x):
        return jnp.sort(x @ W, axis=1)  # sort has no TFLite builtin

    with pytest.raises(te.UnsupportedOpsError) as info:
        te.export(fn, (X,))
    err = info.value
    assert [op for op, _ in err.ops] == ["sort"]
    assert err.ops[0][1].startswith(__file__)
    assert "allow_flex_ops=True" in str(err)
    assert isinstance(err, ConfigError)


def test_supported_ops_convert_without_error() -> None:
    """Negative check for the above: the same model without sort converts."""
    res = te.export(lambda x: jnp.cumsum(x @ W, axis=1), (X,))
    assert res.ops == ("FULLY_CONNECTED", "CUMSUM")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Could not translate MLIR to FlatBuffer./a/b/model.py:12:5: error: 'vhlo.fft_v1' op is "
            "not part of the vhlo support yet.\n<unknown>:0: error: 'vhlo.fft_v1' op failed",
            [("fft", "/a/b/model.py:12:5")],
        ),
        (
            "error: 'tf.XlaCallModule' op is neither a custom op nor a flex op\n"
            "Custom ops: XlaCallModule\n",
            [("tf.XlaCallModule", ""), ("XlaCallModule", "")],
        ),
        ("nothing recognizable", []),
    ],
)
def test_converter_messages_are_parsed(message, expected) -> None:
    assert convert_module._parse_failure(message) == expected


@pytest.mark.usefixtures("no_conversion")
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"example_args": X}, "example_args"),  # not a tuple
        ({"example_args": ("not an array",)}, "example_args[0]"),
        ({"example_args": (np.zeros((2, 8), np.float64),)}, "example_args[0]"),
        ({"example_args": (np.zeros((2, 3), np.float32),)}, "example_args"),  # wrong shape
        ({"config": te.ExportConfig(mode="codebook_int8")}, "hardened"),
        ({"config": te.ExportConfig(mode="full_int8")}, "representative_data"),
        (
            {"config": te.ExportConfig(mode="full_int8"), "representative_data": np.zeros((4, 3))},
            "representative_data[0]",
        ),
        ({"data": np.zeros((4, 9), np.float32)}, "data[0]"),
        ({"data": np.full((4, 8), np.nan, np.float32)}, "data[0]"),
        ({"data": np.zeros((1, 8), np.float32)}, "data[0]"),  # fewer than one batch
        ({"labels": np.zeros(4, np.int32)}, "labels"),  # labels without data
        ({"config": te.ExportConfig(output_names=("a", "b"))}, "ExportConfig.output_names"),
        ({"variables": {"params": {}}}, "variables"),  # variables with a plain function
        ({"hardened": {"params": {}}}, "hardened"),
        ({"config": "float"}, "config"),
    ],
)
def test_bad_arguments_are_refused_before_conversion(kwargs, field) -> None:
    args = {"example_args": (X,), **kwargs}
    example_args = args.pop("example_args")
    with pytest.raises(ConfigError) as info:
        te.export(lambda x: x @ W, example_args, **args)
    assert info.value.field == field


@pytest.mark.usefixtures("no_conversion")
def test_linen_module_needs_variables() -> None:
    with pytest.raises(ConfigError, match="variables") as info:
        te.export(MLP(), (X,))
    assert info.value.field == "variables"


@pytest.mark.usefixtures("no_conversion")
def test_function_returning_a_non_array() -> None:
    with pytest.raises(ConfigError) as info:
        te.export(lambda x: (x @ W, "label"), (X,))
    assert info.value.field.startswith("output")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "int4"}, "ExportConfig.mode"),
        ({"signature": "serving default"}, "ExportConfig.signature"),
        ({"input_names": ("x", "x")}, "ExportConfig.input_names"),
        ({"input_names": ["x"]}, "ExportConfig.input_names"),
        ({"output_names": ("1st",)}, "ExportConfig.output_names"),
        ({"rtol": -1.0}, "ExportConfig.rtol"),
        ({"verify": "maybe"}, "ExportConfig.verify"),
        ({"parity_samples": 0}, "ExportConfig.parity_samples"),
    ],
)
def test_config_validation(kwargs, field) -> None:
    with pytest.raises(ConfigError) as info:
        te.ExportConfig(**kwargs)
    assert info.value.field == field


def test_hardened_layer_missing_from_the_variables(cnn_hardened) -> None:
    model, hardened = cnn_hardened

    class Other(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    other = Other()
    variables = other.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="has no such layer") as info:
        te.export(
            other, (np.zeros((1, 8, 8, 3), np.float32),), variables=variables, hardened=hardened
        )
    assert info.value.field == "variables"
    del model
