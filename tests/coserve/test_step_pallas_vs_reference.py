"""The co-serving step with the Pallas paged-attention kernel (Pallas interpreter on CPU) gives
the reference step's logits and sampled tokens, without recompiling across request mixes."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import (
    CoServeConfig,
    LlamaConfig,
    StepBatch,
    empty_batch,
    init_state,
    make_coserve_step,
)
from jgraph.testing import assert_no_recompile, assert_trees_close

SCFG = CoServeConfig(
    token_budget=16, max_requests=3, page_size=4, num_pages=12, max_pages_per_request=4,
    max_adapters=2, ft_max_len=8, bwd_chunk=4,
)  # fmt: skip


def _batches():
    """Prefill of two requests (one with a bank adapter) beside finetuning rows, then decode +
    a prefill chunk + sampling, then decode only: every row kind, padding in each."""
    out = []
    pt = np.full((3, 4), -1, np.int32)
    pt[0, :3], pt[1, :2], pt[2, :4] = [5, 2, 9], [0, 7], [11, 1, 3, 4]
    b = empty_batch(SCFG)
    b["page_table"] = pt
    b["tokens"][:9] = [256, 5, 6, 7, 8, 9, 256, 3, 4]
    b["positions"][:9] = [0, 1, 2, 3, 4, 5, 0, 1, 2]
    b["slots"][:9] = [0] * 6 + [1] * 3
    b["adapters"][:9] = [-1] * 6 + [0] * 3
    b["tokens"][9:13], b["positions"][9:13] = [256, 40, 41, 42], np.arange(4)
    b["is_ft"][9:13], b["adapters"][9:13] = True, SCFG.max_adapters
    b["labels"][9:13], b["loss_scale"] = [40, 41, 42, 43], np.float32(1 / 7)
    out.append(b)
    b = empty_batch(SCFG)
    b["page_table"] = pt
    b["tokens"][:2], b["positions"][:2], b["slots"][:2] = [17, 18], [6, 3], [0, 1]
    b["adapters"][:2], b["temperature"][:2] = [-1, 0], [0.0, 0.7]
    b["tokens"][2:12], b["positions"][2:12], b["slots"][2:12] = np.arange(10) + 60, np.arange(10), 2
    b["adapters"][2:12] = SCFG.max_adapters  # an inference request on the trainable adapter
    out.append(b)
    b = empty_batch(SCFG)
    b["page_table"] = pt
    b["tokens"][:3], b["positions"][:3], b["slots"][:3] = [19, 20, 21], [7, 4, 10], [0, 1, 2]
    b["adapters"][:3] = [-1, 0, SCFG.max_adapters]
    out.append(b)
    return [StepBatch(**x) for x in out]


def _run(step, params, bank, state, batches):
    logits, tokens = [], []
    for b in batches:
        state, out = step(params, bank.weights, bank.scales, state, b)
        logits.append(np.asarray(out.logits))
        tokens.append(np.asarray(out.next_tokens))
    return state, logits, tokens


@pytest.mark.slow  # whole steps through the Pallas interpreter
def test_pallas_step_equals_reference_step(cfg, params, lora_cfg, lora, bank):
    opt = optax.sgd(0.0)
    # Explicit: "auto" (SCFG's default) is the kernel on an NVIDIA GPU.
    ref_cfg = dataclasses.replace(SCFG, attention_impl="reference")
    ref_step = make_coserve_step(cfg, ref_cfg, lora_cfg, opt, return_logits=True)
    pal_cfg = dataclasses.replace(SCFG, attention_impl="pallas")
    pal_step = make_coserve_step(cfg, pal_cfg, lora_cfg, opt, return_logits=True)
    batches = _batches()
    st_r = init_state(cfg, ref_cfg, lora, opt, key=jax.random.key(4))
    st_p = init_state(cfg, pal_cfg, lora, opt, key=jax.random.key(4))
    # The kernel really is in the pallas step (and not in the reference one).
    jaxpr = str(jax.make_jaxpr(pal_step)(params, bank.weights, bank.scales, st_p, batches[0]))
    assert "pallas_call" in jaxpr
    assert "jgraph_ragged_paged_attention" in jaxpr
    ref_jaxpr = str(jax.make_jaxpr(ref_step)(params, bank.weights, bank.scales, st_r, batches[0]))
    assert "pallas_call" not in ref_jaxpr
    st_r, lg_r, tk_r = _run(ref_step, params, bank, st_r, batches)
    st_p, lg_p, tk_p = _run(pal_step, params, bank, st_p, batches[:1])  # warm-up (compile)
    batches2 = _batches()[1:]
    with assert_no_recompile("co-serving step, attention_impl='pallas'"):
        st_p, lg_p2, tk_p2 = _run(pal_step, params, bank, st_p, batches2)
    lg_p, tk_p = lg_p + lg_p2, tk_p + tk_p2
    for b, a, c, ta, tc in zip(batches, lg_r, lg_p, tk_r, tk_p, strict=True):
        rows = np.asarray(b.slots) >= 0
        assert_trees_close(c[rows], a[rows], kind="forward")
        np.testing.assert_array_equal(tc[rows], ta[rows])  # greedy and sampled tokens
    assert_trees_close(st_p.k_pages, st_r.k_pages, kind="forward")
    assert_trees_close(np.float32(st_p.loss_acc), np.float32(st_r.loss_acc), kind="forward")
    # Negative check: the logits depend on the cached context (a wrong page would show).
    assert np.abs(lg_r[2][0] - lg_r[2][1]).max() > 1e-3


def test_attention_impl_config_errors(cfg, lora_cfg):
    with pytest.raises(ConfigError, match=r"CoServeConfig.attention_impl='triton'.*not one of"):
        CoServeConfig(attention_impl="triton")
    with pytest.raises(ConfigError, match=r"CoServeConfig.page_size=12: must be a power of two"):
        CoServeConfig(page_size=12, attention_impl="pallas")
    CoServeConfig(page_size=12, attention_impl="reference")  # the reference has no such limit
    odd = LlamaConfig.tiny(n_heads=2, n_kv_heads=2, head_dim=24, d_model=48)
    with pytest.raises(ConfigError, match=r"LlamaConfig.head_dim=24: must be a power of two"):
        make_coserve_step(odd, dataclasses.replace(SCFG, attention_impl="pallas"), lora_cfg,
                          optax.sgd(0.1))  # fmt: skip


def test_auto_picks_the_kernel_only_where_it_was_measured_faster():
    from jgraph.coserve._paged_pallas import device_platform, resolve_attention_impl

    assert CoServeConfig().attention_impl == "auto"
    assert device_platform(jax.devices("cpu")[0]) == "cpu"
    assert resolve_attention_impl("auto", "cpu") == ("reference", False)
    # NVIDIA GPUs: the kernel (measured 1.9-6.2x faster than the reference on an H200) ...
    assert resolve_attention_impl("auto", "cuda") == ("pallas", False)
    # ... but not where it cannot run or was not measured.
    assert resolve_attention_impl("auto", "cuda", head_dim=24) == ("reference", False)
    assert resolve_attention_impl("auto", "cuda", page_size=12) == ("reference", False)
    assert resolve_attention_impl("auto", "cuda", tensor_parallel=True) == ("reference", False)
    assert resolve_attention_impl("auto", "rocm") == ("reference", False)
    assert resolve_attention_impl("auto", "tpu") == ("reference", False)
    assert resolve_attention_impl("reference", "cuda") == ("reference", False)
    assert resolve_attention_impl("pallas", "cpu") == ("pallas", True)
    assert resolve_attention_impl("pallas", "gpu") == ("pallas", False)
    with pytest.raises(ConfigError, match=r"no kernel for platform 'tpu'"):
        resolve_attention_impl("pallas", "tpu")
    # An explicit "pallas" is refused where "auto" falls back.
    with pytest.raises(ConfigError, match=r"attention_impl='pallas': .*tensor-parallel mesh"):
        resolve_attention_impl("pallas", "cuda", tensor_parallel=True)
    with pytest.raises(ConfigError, match=r"LlamaConfig.head_dim=24: must be a power of two"):
        resolve_attention_impl("pallas", "cuda", head_dim=24)
