"""jgraph.core.pallas: platform helpers, Triton tile rules, compiler params, CUDA export (on CPU)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

from jgraph.core import ConfigError
from jgraph.core.pallas import (
    GPU_ROUTES,
    TRITON_MIN_DOT,
    device_platform,
    export_for_cuda,
    interpret_on,
    is_pow2,
    mosaic_gpu_params,
    next_pow2,
    triton_params,
    triton_tile_problem,
)


@pytest.mark.parametrize("module", ["jgraph.core", "jgraph.core.pallas"])
def test_importing_does_not_import_jax(module):
    code = f"import sys, {module}; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_device_platform_of_a_cpu_device():
    assert device_platform(jax.devices("cpu")[0]) == "cpu"


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, False), (1, True), (2, True), (3, False), (16, True), (48, False), (64, True),
     (-1, False), (-4, False), (2**40, True)],
)  # fmt: skip
def test_is_pow2(n, expected):
    assert is_pow2(n) is expected


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 16, 17, 48, 100, 2**20 + 1])
def test_next_pow2_is_the_smallest_power_of_two_at_least_n(n):
    p = next_pow2(n)
    assert is_pow2(p)
    assert p >= n
    assert p == 1 or p // 2 < n


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("cpu", True), ("cuda", False), ("gpu", False), ("rocm", False), ("tpu", False)],
)
def test_interpret_on(platform, expected):
    assert interpret_on(platform) is expected


def test_routes_and_min_dot():
    assert GPU_ROUTES == ("triton", "mosaic_gpu")
    assert TRITON_MIN_DOT == 16


@pytest.mark.parametrize(
    ("shape", "dot_operand", "needle"),
    [
        ((64, 128), False, None),
        ((64, 128), True, None),
        ((1, 2, 16, 16), True, None),
        ((), False, None),
        ((1,), False, None),
        ((8, 128), False, None),
        ((48, 128), False, "48 is not a power of two"),
        ((64, 0), False, "0 is not a power of two"),
        ((8, 128), True, "8 < 16"),
        ((128, 8), True, "8 < 16"),
        ((4, 16, 16), True, None),  # only the last two sides are dot sides
        ((64,), True, "at least 2 dims"),
    ],
)
def test_triton_tile_problem(shape, dot_operand, needle):
    problem = triton_tile_problem(shape, dot_operand=dot_operand)
    if needle is None:
        assert problem is None
    else:
        assert needle in problem
        assert problem.startswith(f"tile {tuple(shape)}")


def test_triton_tile_problem_message():
    assert triton_tile_problem([48, 128]) == "tile (48, 128): 48 is not a power of two (Triton)"


def test_triton_params_pass_through():
    params = triton_params(num_warps=8, num_stages=3)
    assert (params.num_warps, params.num_stages) == (8, 3)
    assert (triton_params().num_warps, triton_params().num_stages) == (4, 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_warps": 3}, "num_warps"),
        ({"num_warps": 0}, "num_warps"),
        ({"num_warps": 32}, "num_warps"),
        ({"num_warps": True}, "num_warps"),
        ({"num_stages": 0}, "num_stages"),
        ({"num_stages": 2.0}, "num_stages"),
    ],
)
def test_triton_params_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        triton_params(**kwargs)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}=")


def test_mosaic_gpu_params():
    params = mosaic_gpu_params(num_stages=3)
    assert type(params).__module__.startswith("jax")
    if hasattr(params, "max_concurrent_steps"):
        assert params.max_concurrent_steps == 3
    with pytest.raises(ConfigError, match="num_stages"):
        mosaic_gpu_params(num_stages=0)


def _exp_kernel(x_ref, o_ref):
    o_ref[...] = jnp.exp(x_ref[...])


def _blocked_exp(block, compiler_params):
    """exp over a (128, 256) fp16 array in ``block`` tiles, as a Pallas call."""

    def fn(x):
        spec = pl.BlockSpec(block, lambda i, j: (i, j))
        return pl.pallas_call(
            _exp_kernel,
            grid=(pl.cdiv(x.shape[0], block[0]), pl.cdiv(x.shape[1], block[1])),
            in_specs=[spec],
            out_specs=spec,
            out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            compiler_params=compiler_params,
        )(x)

    return fn


_X = jax.ShapeDtypeStruct((128, 256), jnp.float16)


def test_export_for_cuda_triton_kernel():
    exported = export_for_cuda(_blocked_exp((64, 128), triton_params()), _X)
    assert exported.platforms == ("cuda",)
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()
    assert exported.out_avals[0].shape == _X.shape


def test_export_for_cuda_accepts_a_jitted_function():
    fn = jax.jit(_blocked_exp((64, 128), triton_params()))
    assert "__gpu$xla.gpu.triton" in export_for_cuda(fn, _X).mlir_module()


def test_export_for_cuda_mosaic_gpu_kernel():
    exported = export_for_cuda(_blocked_exp((64, 128), mosaic_gpu_params()), _X)
    assert "mosaic_gpu" in exported.mlir_module()


def test_export_for_cuda_rejects_a_non_pow2_triton_tile():
    assert triton_tile_problem((48, 128)) is not None
    with pytest.raises(ValueError, match="power of 2"):
        export_for_cuda(_blocked_exp((48, 128), triton_params()), _X)
