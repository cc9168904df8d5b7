"""Shared tiny model and one co-serving engine for the coserve tests (built once: compiling
the step is the expensive part on CPU)."""

import jax
import optax
import pytest

from jgraph.coserve import (
    AdapterBank,
    CoServeConfig,
    CoServeEngine,
    LlamaConfig,
    LoraConfig,
    init_lora,
    init_params,
)
from jgraph.coserve.model import LORA_TARGETS


@pytest.fixture(scope="session")
def cfg():
    return LlamaConfig.tiny()


@pytest.fixture(scope="session")
def params(cfg):
    return init_params(cfg, key=jax.random.key(0))


@pytest.fixture(scope="session")
def lora_cfg():
    # Every projection adapted, so every LoRA gradient path is exercised.
    return LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS)


@pytest.fixture(scope="session")
def lora(cfg, lora_cfg):
    # B != 0 so that the adapter changes the output (a zero-B adapter would be a no-op).
    return init_lora(cfg, lora_cfg, key=jax.random.key(1), b_std=0.05)


@pytest.fixture(scope="session")
def bank(cfg, lora_cfg, lora):
    b_cfg = LoraConfig(rank=2, alpha=4.0, targets=("v_proj", "up_proj"))
    other = init_lora(cfg, b_cfg, key=jax.random.key(11), b_std=0.2)
    return AdapterBank.build(cfg, [("a", lora_cfg, lora), ("b", b_cfg, other)], capacity=2)


@pytest.fixture(scope="session")
def engine(cfg, params, lora_cfg, bank):
    """Backward chunks of 4 tokens over S=16, two samples per update, at most 6 finetuning
    forward tokens per step (so samples span several steps)."""
    scfg = CoServeConfig(
        token_budget=8, max_requests=3, page_size=4, num_pages=10, max_pages_per_request=4,
        max_adapters=2, ft_max_len=16, bwd_chunk=4, grad_accum=2,
    )  # fmt: skip
    return CoServeEngine(
        cfg, params, scfg, lora_cfg, optimizer=optax.sgd(0.3, momentum=0.9),
        key=jax.random.key(0), bank=bank, ft_tokens_per_step=6,
    )  # fmt: skip
