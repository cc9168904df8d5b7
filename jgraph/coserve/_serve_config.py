"""`ServeConfig` and the model the server loads: the engine, tokenizer and startup adapters."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import optax

from jgraph.core import ConfigError, check_int, check_number
from jgraph.coserve._backend import EngineBackend
from jgraph.coserve._config import MODEL_PRESETS, CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._engine import CoServeEngine
from jgraph.coserve._lora import AdapterBank, init_lora, load_peft
from jgraph.coserve._tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

__all__ = ["API_KEY_ENV", "Runtime", "ServeConfig", "load_runtime"]

log = logging.getLogger(__name__)

API_KEY_ENV = "JGRAPH_API_KEY"
"""Environment variable read for the API key when ``--api-key`` is not given."""


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "jgraph" / "serve")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What `jgraph serve` runs.

    Attributes:
        model: a named shape (`MODEL_PRESETS`, random init with the byte tokenizer) or a
            local Hugging Face Llama checkpoint folder (with ``tokenizer.json``).
        adapters: (name, PEFT folder) pairs served from the start, by ``model=name``.
        state_dir: uploaded files, job records and fine-tuned adapters (survive restarts).
        host: bind address (loopback by default: the server has no TLS).
        port: TCP port.
        api_key: when set, every route needs ``Authorization: Bearer <api_key>``.
        coserve: engine capacities (None: `default_coserve`).
        lora: the adapter finetuning jobs train (rank, alpha, targets).
        learning_rate: Adam's learning rate for finetuning jobs (fixed per server for now:
            the engine is compiled with one optimizer).
        max_queue: inference requests admitted (waiting + running) before 429s.
        default_max_tokens: ``max_tokens`` when a request leaves it out.
        max_upload_bytes: the largest uploaded file.
        bank_rank: rank of the inference adapter slots (None: the largest of ``lora.rank``
            and the startup adapters' ranks).
        seed: PRNG seed (random-init weights, adapter init, sampling).
    """

    model: str = "tiny"
    adapters: tuple[tuple[str, str], ...] = ()
    state_dir: str = dataclasses.field(default_factory=_default_state_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    coserve: CoServeConfig | None = None
    lora: LoraConfig = dataclasses.field(
        default_factory=lambda: LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj"))
    )
    learning_rate: float = 1e-3
    max_queue: int = 64
    default_max_tokens: int = 16
    max_upload_bytes: int = 16 * 2**20
    bank_rank: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_PRESETS and not (Path(self.model) / "config.json").is_file():
            raise ConfigError(
                "ServeConfig.model", self.model, "is neither a model shape nor a checkpoint",
                f"use one of {MODEL_PRESETS} or a folder with config.json",
            )  # fmt: skip
        names = [n for n, _ in self.adapters]
        if len(set(names)) != len(names) or any(not n or n.startswith("ft:") for n in names):
            raise ConfigError(
                "ServeConfig.adapters", names, "names must be unique, non-empty, not 'ft:...'",
                "rename the adapters",
            )  # fmt: skip
        check_int("ServeConfig.port", self.port, minimum=0, maximum=65535)
        check_number("ServeConfig.learning_rate", self.learning_rate, minimum=0.0)
        check_int("ServeConfig.max_queue", self.max_queue, minimum=1)
        check_int("ServeConfig.default_max_tokens", self.default_max_tokens, minimum=1)
        check_int("ServeConfig.max_upload_bytes", self.max_upload_bytes, minimum=1)
        if self.bank_rank is not None:
            check_int("ServeConfig.bank_rank", self.bank_rank, minimum=1)


def default_coserve() -> CoServeConfig:
    """Capacities for serving: 8 requests of up to 512 tokens, 4 adapter slots, samples of up
    to 256 tokens (byte-tokenized text is long)."""
    return CoServeConfig(
        token_budget=128, max_requests=8, page_size=16, num_pages=256,
        max_pages_per_request=32, max_adapters=4, ft_max_len=256, bwd_chunk=64,
    )  # fmt: skip


@dataclasses.dataclass
class Runtime:
    """A loaded model: the engine backend, tokenizer, startup adapters and names.

    Built once by `load_runtime` (compiling the step is the slow part) and reusable by a
    later `CoServeService` on the same process (`EngineBackend.reset` clears it).
    """

    backend: EngineBackend
    tokenizer: Tokenizer
    base_name: str
    chat_template: str | None
    lora_cfg: LoraConfig
    cfg: LlamaConfig
    adapters: dict[str, tuple[LoraConfig, Any]]


def load_runtime(config: ServeConfig) -> Runtime:
    """Loads the model and startup adapters and builds the engine (no compilation yet).

    Raises:
        ConfigError: a bad checkpoint or adapter (the message names the file).
    """
    key = jax.random.key(config.seed)
    k_params, k_engine, k_lora = jax.random.split(key, 3)
    tok: Tokenizer
    if config.model in MODEL_PRESETS:
        from jgraph.coserve._model import init_params

        cfg = LlamaConfig.preset(config.model)
        params = init_params(cfg, key=k_params)
        tok, template, base = ByteTokenizer(), None, config.model
    else:
        from jgraph.coserve._checkpoint import load_hf_checkpoint

        cfg, params = load_hf_checkpoint(config.model)
        hf = HFTokenizer(config.model)
        tok, template, base = hf, hf.chat_template, Path(config.model).name
    adapters = {}
    for name, path in config.adapters:
        adapters[name] = load_peft(path, cfg)
    scfg = config.coserve or default_coserve()
    ranks = [config.lora.rank, *(c.rank for c, _ in adapters.values())]
    targets = sorted({*config.lora.targets, *(t for c, _ in adapters.values() for t in c.targets)})
    bank = AdapterBank.build(
        cfg, [], capacity=scfg.max_adapters, rank=config.bank_rank or max(ranks), targets=targets
    )
    lora_cfg = config.lora

    def fresh() -> Any:
        return init_lora(cfg, lora_cfg, key=k_lora)

    engine = CoServeEngine(
        cfg, params, scfg, lora_cfg, optimizer=optax.adam(config.learning_rate),
        key=k_engine, bank=bank, lora=fresh(),
    )  # fmt: skip
    backend = EngineBackend(engine, init_adapter=fresh)
    log.info("model %s loaded (%d layers, vocab %d)", base, cfg.n_layers, cfg.vocab_size)
    return Runtime(backend, tok, base, template, lora_cfg, cfg, adapters)
