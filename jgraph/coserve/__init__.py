"""FlexLLM co-serving: LLM inference and token-level LoRA finetuning in one jitted step.

The engine (issue #5): a Llama-architecture model (`LlamaConfig`, `init_params`, `forward`,
`LlamaModel`, Hugging Face checkpoints and tokenizers from local files), LoRA adapters
(`LoraConfig`, `init_lora`, `AdapterBank` with per-token selection, `merge_lora`, PEFT
`save_peft`/`load_peft`), a paged KV cache (`paged_attention`, pure JAX, and
`paged_attention_pallas`, a Pallas/Triton kernel selected by ``CoServeConfig.attention_impl``),
and the co-serving step (`make_coserve_step`) that runs decode, chunked-prefill and
finetuning-forward tokens plus one finetuning backward step per call, with exact LoRA gradients
and pruned activation retention (the backward split by token chunks or by layers:
``CoServeConfig.backward_mode``, `backward_steps`); with a ``MODEL`` mesh axis the same step
runs tensor-parallel with LoRA shardings derived from the base weights (`coserve_specs`,
`lora_specs`). `CoServeEngine` is a simple host loop around it (FCFS admission, chunked
prefill, finetuning in the leftover budget, Orbax checkpoints of the finetuning job); the
request manager, SLO controller and HTTP server are a later issue.
`coserve_backward_bytes` / `vjp_residual_bytes` count activation memory on abstract shapes.

References:
    Oliaro et al., "FlexLLM: Token-Level Co-Serving of LLM Inference and Finetuning with SLO
    Guarantees", NSDI 2026 (arXiv 2402.18789).
"""

from jgraph.coserve._backward import backward_steps as backward_steps
from jgraph.coserve._checkpoint import config_from_hf as config_from_hf
from jgraph.coserve._checkpoint import load_hf_checkpoint as load_hf_checkpoint
from jgraph.coserve._checkpoint import save_hf_checkpoint as save_hf_checkpoint
from jgraph.coserve._config import LORA_TARGETS as LORA_TARGETS
from jgraph.coserve._config import AttentionImpl as AttentionImpl
from jgraph.coserve._config import BackwardMode as BackwardMode
from jgraph.coserve._config import CoServeConfig as CoServeConfig
from jgraph.coserve._config import LlamaConfig as LlamaConfig
from jgraph.coserve._config import LoraConfig as LoraConfig
from jgraph.coserve._demo import demo as demo
from jgraph.coserve._engine import TRAINABLE as TRAINABLE
from jgraph.coserve._engine import CoServeEngine as CoServeEngine
from jgraph.coserve._engine import StepReport as StepReport
from jgraph.coserve._lora import BASE as BASE
from jgraph.coserve._lora import AdapterBank as AdapterBank
from jgraph.coserve._lora import adapter_sel as adapter_sel
from jgraph.coserve._lora import init_lora as init_lora
from jgraph.coserve._lora import load_peft as load_peft
from jgraph.coserve._lora import merge_lora as merge_lora
from jgraph.coserve._lora import save_peft as save_peft
from jgraph.coserve._memory import coserve_backward_bytes as coserve_backward_bytes
from jgraph.coserve._memory import vjp_residual_bytes as vjp_residual_bytes
from jgraph.coserve._model import LlamaModel as LlamaModel
from jgraph.coserve._model import forward as forward
from jgraph.coserve._model import init_params as init_params
from jgraph.coserve._paged import INVALID as INVALID
from jgraph.coserve._paged import paged_attention as paged_attention
from jgraph.coserve._paged import write_pages as write_pages
from jgraph.coserve._paged_pallas import paged_attention_pallas as paged_attention_pallas
from jgraph.coserve._parallel import count_collectives as count_collectives
from jgraph.coserve._parallel import lora_specs as lora_specs
from jgraph.coserve._parallel import make_tp_forward as make_tp_forward
from jgraph.coserve._parallel import param_specs as param_specs
from jgraph.coserve._parallel import shard_tree as shard_tree
from jgraph.coserve._reference import plain_lora_train as plain_lora_train
from jgraph.coserve._reference import sample_loss_reference as sample_loss_reference
from jgraph.coserve._step import CoServeState as CoServeState
from jgraph.coserve._step import StepBatch as StepBatch
from jgraph.coserve._step import StepOutput as StepOutput
from jgraph.coserve._step import coserve_specs as coserve_specs
from jgraph.coserve._step import empty_batch as empty_batch
from jgraph.coserve._step import init_state as init_state
from jgraph.coserve._step import make_coserve_step as make_coserve_step
from jgraph.coserve._tokenizer import ByteTokenizer as ByteTokenizer
from jgraph.coserve._tokenizer import HFTokenizer as HFTokenizer

__all__ = [
    "BASE",
    "INVALID",
    "LORA_TARGETS",
    "TRAINABLE",
    "AdapterBank",
    "AttentionImpl",
    "BackwardMode",
    "ByteTokenizer",
    "CoServeConfig",
    "CoServeEngine",
    "CoServeState",
    "HFTokenizer",
    "LlamaConfig",
    "LlamaModel",
    "LoraConfig",
    "StepBatch",
    "StepOutput",
    "StepReport",
    "adapter_sel",
    "backward_steps",
    "config_from_hf",
    "coserve_backward_bytes",
    "coserve_specs",
    "count_collectives",
    "demo",
    "empty_batch",
    "forward",
    "init_lora",
    "init_params",
    "init_state",
    "load_hf_checkpoint",
    "load_peft",
    "lora_specs",
    "make_coserve_step",
    "make_tp_forward",
    "merge_lora",
    "paged_attention",
    "paged_attention_pallas",
    "param_specs",
    "plain_lora_train",
    "sample_loss_reference",
    "save_hf_checkpoint",
    "save_peft",
    "shard_tree",
    "vjp_residual_bytes",
    "write_pages",
]
