"""`harden`, index packing and the compression report."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph import quant
from jgraph.core import ConfigError
from jgraph.quant._models import SmallCNN
from jgraph.testing import assert_trees_close

X = jnp.ones((2, 8, 8, 1))


@pytest.fixture(scope="module", params=[2, pytest.param(4, marks=pytest.mark.slow)])
def hardened(request):
    bits = request.param
    model = SmallCNN(num_classes=10, width=4)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), X)
    qmodel = quant.dgms(model, quant.DGMSConfig(bits=bits))
    qvars = qmodel.init(variables, X, key=jax.random.key(1), train=False)
    return bits, model, qmodel, qvars, quant.harden(qvars)


def test_at_most_k_distinct_values_including_zero(hardened):
    bits, _, _, _, h = hardened
    assert sorted(h.codebooks) == ["conv2", "conv3", "fc1"]
    for name, idx in h.indices.items():
        kernel = h.variables["params"][name]["kernel"]
        values = np.unique(np.asarray(kernel))
        assert values.size <= 2**bits
        assert h.codebooks[name].shape == (2**bits,)
        assert h.codebooks[name][0] == 0.0
        assert idx.dtype == np.uint8
        assert idx.shape == kernel.shape
        assert idx.max() < 2**bits
        # codebook[indices] is exactly the hard kernel
        np.testing.assert_array_equal(h.codebooks[name][idx], np.asarray(kernel))
    assert "mixture" not in h.variables


def test_excluded_layers_and_other_collections_untouched(hardened):
    _, _, _, qvars, h = hardened
    for name in ("conv1", "fc2"):
        assert_trees_close(h.variables["params"][name], qvars["params"][name], kind="exact")
    assert_trees_close(h.variables["batch_stats"], qvars["batch_stats"], kind="exact")
    # biases and BatchNorm parameters untouched too
    assert_trees_close(h.variables["params"]["bn2"], qvars["params"]["bn2"], kind="exact")
    assert_trees_close(
        h.variables["params"]["fc1"]["bias"], qvars["params"]["fc1"]["bias"], kind="exact"
    )
    # negative check: quantized kernels did change
    assert not np.array_equal(
        np.asarray(h.variables["params"]["conv2"]["kernel"]),
        np.asarray(qvars["params"]["conv2"]["kernel"]),
    )


def test_hard_apply_equals_model_on_hardened_variables(hardened):
    _, model, qmodel, qvars, h = hardened
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32))
    assert_trees_close(
        qmodel.apply(qvars, x, hard=True, train=False),
        model.apply(h.variables, x, train=False),
        kind="exact",
    )


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_roundtrip(bits):
    idx = np.random.default_rng(bits).integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = quant.mixture.pack_indices(idx, bits)
    assert packed.nbytes == math.ceil(1001 * bits / 8)
    np.testing.assert_array_equal(quant.mixture.unpack_indices(packed, bits, 1001), idx)


def test_pack_rejects_too_wide_index():
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        quant.mixture.pack_indices(np.array([4], np.uint8), 2)


def test_compression_report_by_hand():
    # K = 4 (2 bits): 16 weights, 8 of them pruned; a bias of 4 float32 values.
    mix = {
        "mu": jnp.array([-1.0, 1.0, 2.0]),
        "sigma": jnp.full((4,), 0.2),
        "pi": jnp.full((4,), 0.25),
        "tau": jnp.array(0.01),
    }
    kernel = jnp.array([0.0] * 8 + [-1.0, 1.0, 2.0, 2.0] * 2).reshape(4, 4)
    v = {
        "params": {
            "q": {"kernel": kernel, "bias": jnp.zeros(4)},
            "fp": {"kernel": jnp.ones((3, 2))},
        },
        "mixture": {"q": mix},
    }
    r = quant.compression_report(quant.harden(v))
    (layer,) = r.layers
    assert (layer.name, layer.size, layer.bits, layer.distinct) == ("q", 16, 2, 4)
    assert layer.sparsity == 0.5
    assert layer.paper_cr == 32 / (2 * 0.5)
    assert layer.packed_bytes == 4 + 16  # 16 × 2 bits + 4 float32 codebook entries
    assert r.quantized_weights == 16
    assert r.fp_values == 4 + 6
    assert r.fp32_bytes == 4 * (16 + 4 + 6)
    assert r.packed_bytes == 20 + 40
    assert r.ratio == r.fp32_bytes / r.packed_bytes
    assert r.paper_cr == 32.0
    assert set(r.as_dict()) >= {"layers", "paper_cr", "packed_bytes", "ratio", "sparsity"}


def test_harden_without_mixture_is_a_config_error():
    with pytest.raises(ConfigError, match="has no 'mixture' collection to harden"):
        quant.harden({"params": {}})
