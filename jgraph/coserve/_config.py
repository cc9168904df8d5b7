"""Configs of the co-serving engine: the model shape, the LoRA adapters and the step capacities.

All three are frozen, keyword-only and hashable, so they pass as static jit arguments; every
field is validated in ``__post_init__`` and a bad value raises `jgraph.core.ConfigError` naming
the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from jgraph.core import ConfigError, check_choice, check_int, check_number

__all__ = [
    "LORA_TARGETS",
    "MODEL_PRESETS",
    "QKV_BIASES",
    "AttentionImpl",
    "BackwardMode",
    "CoServeConfig",
    "LlamaConfig",
    "LoraConfig",
]

LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""The projections a LoRA adapter may target (Hugging Face / PEFT module names)."""

QKV_BIASES: dict[str, str] = {"q_proj": "q_bias", "k_proj": "k_bias", "v_proj": "v_bias"}
"""Projection -> its bias parameter when `LlamaConfig.qkv_bias` is set (Qwen2)."""

DType = Literal["float32", "bfloat16", "float16"]
AttentionImpl = Literal["reference", "pallas", "auto"]
"""Paged attention of inference rows: the pure-JAX reference, the Pallas kernel, or "auto"."""
BackwardMode = Literal["token", "layer"]
"""How a finetuning sample's backward is split over steps: by token chunks or by layers."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Shape of a Llama-architecture decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).

    Attributes:
        vocab_size: number of token ids.
        d_model: hidden size D.
        n_layers: number of decoder layers L.
        n_heads: query heads Hq.
        n_kv_heads: key/value heads Hkv (grouped-query attention); divides ``n_heads``.
        head_dim: per-head size d (``d_model // n_heads`` in Llama checkpoints).
        d_ff: SwiGLU hidden size F.
        rope_theta: RoPE base frequency.
        rope_scaling_factor: RoPE scaling factor, or None for plain RoPE.
        rope_scaling_type: how the factor applies: ``"llama3"`` (Llama-3.1: long wavelengths
            divided by it, short ones kept, the band between interpolated), ``"linear"``
            (position interpolation: every frequency divided by it) or ``"dynamic"``
            (dynamic NTK, transformers' ``"dynamic"``: plain RoPE up to
            ``rope_original_max_len`` tokens; a longer sequence of length n raises the base to
            ``theta * (factor * n / max_len - factor + 1) ** (d / (d - 2))``; see
            `rope_tables` for which length each token uses).
        rope_low_freq_factor: "llama3" scaling low-frequency factor.
        rope_high_freq_factor: "llama3" scaling high-frequency factor.
        rope_original_max_len: "llama3" scaling's original context length; for "dynamic", the
            model's ``max_position_embeddings``.
        norm_eps: RMSNorm epsilon.
        tie_embeddings: the output head reuses the embedding matrix.
        qkv_bias: the q/k/v projections add a bias (Qwen2/Qwen2.5); params then hold
            ``q_bias`` [L, Hq*d], ``k_bias``/``v_bias`` [L, Hkv*d].
        dtype: parameter and activation dtype (softmax and losses run in float32).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rope_theta: float = 10000.0
    rope_scaling_factor: float | None = None
    rope_scaling_type: Literal["llama3", "linear", "dynamic"] = "llama3"
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    dtype: DType = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            check_int(f"LlamaConfig.{name}", getattr(self, name), minimum=1)
        check_int("LlamaConfig.head_dim", self.head_dim, minimum=2)
        if self.head_dim % 2:
            raise ConfigError(
                "LlamaConfig.head_dim", self.head_dim, "RoPE needs an even head size", "use 64/128"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                "LlamaConfig.n_kv_heads",
                self.n_kv_heads,
                f"must divide n_heads={self.n_heads} (grouped-query attention)",
                "pick a divisor of n_heads",
            )
        check_number("LlamaConfig.rope_theta", self.rope_theta, minimum=0.0, strict_minimum=True)
        check_number("LlamaConfig.norm_eps", self.norm_eps, minimum=0.0, strict_minimum=True)
        if self.rope_scaling_factor is not None:
            check_number("LlamaConfig.rope_scaling_factor", self.rope_scaling_factor, minimum=1.0)
        check_choice(
            "LlamaConfig.rope_scaling_type", self.rope_scaling_type, ("llama3", "linear", "dynamic")
        )
        check_int("LlamaConfig.rope_original_max_len", self.rope_original_max_len, minimum=1)
        if self.rope_scaling_type == "dynamic" and self.head_dim <= 2:
            raise ConfigError(
                "LlamaConfig.head_dim",
                self.head_dim,
                "dynamic NTK RoPE needs head_dim > 2 (its exponent is d / (d - 2))",
                "use head_dim >= 4 or another rope_scaling_type",
            )
        check_choice("LlamaConfig.dtype", self.dtype, ("float32", "bfloat16", "float16"))

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def proj_shape(self, target: str) -> tuple[int, int]:
        """(in, out) of a projection named like `LORA_TARGETS`."""
        d, f = self.d_model, self.d_ff
        return {
            "q_proj": (d, self.q_dim),
            "k_proj": (d, self.kv_dim),
            "v_proj": (d, self.kv_dim),
            "o_proj": (self.q_dim, d),
            "gate_proj": (d, f),
            "up_proj": (d, f),
            "down_proj": (f, d),
        }[target]

    def param_count(self) -> int:
        """Number of parameters (embedding and head counted once each unless tied)."""
        per_layer = sum(i * o for i, o in map(self.proj_shape, LORA_TARGETS)) + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + head + self.d_model + self.n_layers * per_layer

    @classmethod
    def tiny(cls, **overrides: Any) -> LlamaConfig:
        """A 2-layer model for CPU tests (byte-level vocabulary of 260 ids)."""
        base: dict[str, Any] = {
            "vocab_size": 260,
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "head_dim": 16,
            "d_ff": 128,
        }
        return cls(**{**base, **overrides})  # __post_init__ validates the overrides

    @classmethod
    def small(cls, **overrides: Any) -> LlamaConfig:
        """A 4-layer D=256 model for CPU benchmarks."""
        base: dict[str, Any] = {
            "vocab_size": 260,
            "d_model": 256,
            "n_layers": 4,
            "n_heads": 8,
            "n_kv_heads": 4,
            "head_dim": 32,
            "d_ff": 688,
        }
        return cls(**{**base, **overrides})

    @classmethod
    def llama31_8b(cls, **overrides: Any) -> LlamaConfig:
        """Llama-3.1-8B shapes (bf16). Only trace these abstractly on a CPU machine."""
        base: dict[str, Any] = {
            "vocab_size": 128256,
            "d_model": 4096,
            "n_layers": 32,
            "n_heads": 32,
            "n_kv_heads": 8,
            "head_dim": 128,
            "d_ff": 14336,
            "rope_theta": 500000.0,
            "rope_scaling_factor": 8.0,
            "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0,
            "rope_original_max_len": 8192,
            "dtype": "bfloat16",
        }
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LlamaConfig:
        """The model shape named ``name`` (one of `MODEL_PRESETS`), e.g. ``"tiny"``.

        Example:
            >>> LlamaConfig.preset("tiny").n_layers
            2
        """
        check_choice("LlamaConfig.preset", name, MODEL_PRESETS)
        build: Any = getattr(cls, name)
        return build(**overrides)


MODEL_PRESETS: tuple[str, ...] = ("tiny", "small", "llama31_8b")
"""The `LlamaConfig` shapes that have a name (`LlamaConfig.preset`; ``jgraph serve --model``)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """A LoRA adapter: ``y = x W + scale * (x A) B`` on the target projections.

    Attributes:
        rank: r, the inner size of A [in, r] and B [r, out]; >= 1.
        alpha: scale numerator; the update is scaled by `scale`.
        targets: projection names from `LORA_TARGETS`.
        rslora: rank-stabilized LoRA: ``scale = alpha / sqrt(rank)`` instead of
            ``alpha / rank`` (PEFT's ``use_rslora``).

    References:
        Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022;
        Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    rslora: bool = False

    def __post_init__(self) -> None:
        check_int("LoraConfig.rank", self.rank, minimum=1, fix="use rank >= 1 (e.g. 8 or 16)")
        check_number("LoraConfig.alpha", self.alpha, minimum=0.0, strict_minimum=True)
        if isinstance(self.targets, list):  # keep the config hashable (a static jit argument)
            object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets or isinstance(self.targets, str):
            raise ConfigError(
                "LoraConfig.targets",
                self.targets,
                "must be a non-empty tuple of projection names",
                f"pass e.g. ('q_proj', 'v_proj'); choose from {', '.join(LORA_TARGETS)}",
            )
        for t in self.targets:
            check_choice("LoraConfig.targets", t, LORA_TARGETS)
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(
                "LoraConfig.targets", self.targets, "lists a target twice", "list each once"
            )
        if not isinstance(self.rslora, bool):
            raise ConfigError(
                "LoraConfig.rslora", self.rslora, "must be a bool", "pass True or False"
            )

    @property
    def scale(self) -> float:
        """The update's factor: ``alpha / sqrt(rank)`` with `rslora`, else ``alpha / rank``."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoServeConfig:
    """Static capacities of the jitted co-serving step (fixed shapes: one compilation).

    Attributes:
        token_budget: B, rows of the packed batch per step (decode + prefill + finetuning
            forward tokens).
        max_requests: R, inference request slots.
        page_size: tokens per KV page.
        num_pages: pages in the KV pool (shared by all requests).
        max_pages_per_request: page-table width; a request holds at most
            ``page_size * max_pages_per_request`` tokens.
        max_adapters: inference adapter slots in the bank (the trainable adapter is one more).
        ft_max_len: S, the longest finetuning sample (finetuning K/V and retention buffers).
        bwd_chunk: tokens per backward chunk (1 <= bwd_chunk <= S; need not divide S: the
            last chunk of a sample may be partial); a chunk goes through all layers in one step.
        grad_accum: finetuning samples per optimizer update.
        backward_mode: "token" (FlexLLM's token-level backward: each step back-propagates one
            chunk of ``bwd_chunk`` tokens through all layers, carrying dK/dV accumulators
            [L, S, Hkv, d] between steps) or "layer" (FlexLLM's layer-level split: each step
            back-propagates ``bwd_layers`` layers for all of the sample's tokens, carrying only
            the gradient of the lowest processed layer's input in ``ft_dh``; inside a step the
            tokens still go in ``bwd_chunk`` query chunks, so no S x S matrix is formed).
        bwd_layers: k, layers per backward step in "layer" mode (1 <= k <= n_layers; the
            lowest group may be partial).
        attention_impl: paged attention of inference rows: "reference" (pure JAX, every
            backend), "pallas" (the Pallas kernel: Triton on GPU, the Pallas interpreter on
            CPU, for tests only: it is slow there), or "auto" (the kernel on NVIDIA GPUs, where
            it was measured faster, when head size and page size are powers of two and there
            is no tensor-parallel mesh; the reference elsewhere: `resolve_attention_impl`).
    """

    token_budget: int = 64
    max_requests: int = 8
    page_size: int = 16
    num_pages: int = 64
    max_pages_per_request: int = 8
    max_adapters: int = 2
    ft_max_len: int = 64
    bwd_chunk: int = 16
    grad_accum: int = 1
    backward_mode: BackwardMode = "token"
    bwd_layers: int = 1
    attention_impl: AttentionImpl = "auto"

    def __post_init__(self) -> None:
        for name in (
            "token_budget",
            "max_requests",
            "page_size",
            "num_pages",
            "max_pages_per_request",
            "ft_max_len",
            "grad_accum",
        ):
            check_int(f"CoServeConfig.{name}", getattr(self, name), minimum=1)
        check_int("CoServeConfig.max_adapters", self.max_adapters, minimum=0)
        check_int(
            "CoServeConfig.bwd_chunk",
            self.bwd_chunk,
            minimum=1,
            maximum=self.ft_max_len,
            fix=f"use 1 <= bwd_chunk <= ft_max_len={self.ft_max_len}",
        )
        check_choice("CoServeConfig.backward_mode", self.backward_mode, ("token", "layer"))
        check_int(
            "CoServeConfig.bwd_layers", self.bwd_layers, minimum=1, fix="use 1 <= k <= n_layers"
        )
        check_choice(
            "CoServeConfig.attention_impl", self.attention_impl, ("reference", "pallas", "auto")
        )
        if self.attention_impl == "pallas" and self.page_size & (self.page_size - 1):
            raise ConfigError(
                "CoServeConfig.page_size",
                self.page_size,
                "must be a power of two with attention_impl='pallas' (Triton tile shapes)",
                "use 8, 16 or 32 tokens per page, or attention_impl='reference'",
            )

    @property
    def max_request_len(self) -> int:
        return self.page_size * self.max_pages_per_request

    @property
    def n_bwd_chunks(self) -> int:
        """Backward chunks of a sample of ``ft_max_len`` tokens (the last may be partial)."""
        return -(-self.ft_max_len // self.bwd_chunk)

    @property
    def ft_buffer_len(self) -> int:
        """Rows of the finetuning buffers: ``ft_max_len`` rounded up to whole backward chunks,
        so a partial last chunk is sliced without clamping (the rows past ``ft_max_len`` are
        never written and are masked out of the loss gradient)."""
        return self.n_bwd_chunks * self.bwd_chunk
