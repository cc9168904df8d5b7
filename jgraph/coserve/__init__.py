"""FlexLLM co-serving: LLM inference and token-level LoRA finetuning in one jitted step.

The engine (issue #5): a Llama-architecture model (`LlamaConfig`, `init_params`), LoRA
adapters (`LoraConfig`, `init_lora`, `AdapterBank` with per-token selection, `merge_lora`),
and the co-serving step (`make_coserve_step`, `init_state`, `empty_batch` -> `StepBatch`,
`StepOutput`) that runs decode, chunked-prefill and finetuning-forward tokens plus one
finetuning backward step per call, with exact LoRA gradients and pruned activation retention
(the backward split by token chunks or by layers: ``CoServeConfig.backward_mode``,
`backward_steps`). `CoServeEngine` runs it (issue #16): a pure scheduler plans each step
(continuous batching with chunked prefill, admission by free KV pages, preemption of the
newest request under KV pressure, per-request sampling), several finetuning jobs share the
finetuning budget that an optional SLO policy (`jgraph.coserve.slo`) grants per step, and
each job checkpoints with Orbax.

Public submodules:

* `jgraph.coserve.model`: the Flax `LlamaModel`, the full-sequence `forward`, LoRA targets
  and per-token adapter indices.
* `jgraph.coserve.attention`: the paged KV cache (`paged_attention_reference`, pure JAX, and
  `paged_attention_pallas`, the Pallas kernel picked by ``CoServeConfig.attention_impl``).
* `jgraph.coserve.checkpoint`: Hugging Face checkpoints and tokenizers, PEFT adapters.
* `jgraph.coserve.parallel`: tensor-parallel shardings with LoRA specs derived from the base
  weights.
* `jgraph.coserve.memory`: activation bytes on abstract shapes.
* `jgraph.coserve.reference`: the plain LoRA training loop the step is tested against.
* `jgraph.coserve.sampling`: per-request sampling parameters, the batched top-p sampler, seeded
  keys and stop strings.
* `jgraph.coserve.validate`: the checks of weights, adapters, samples and prompts that run
  before any tracing.
* `jgraph.coserve.slo`: the step-time cost model, the SLO-aware finetuning budget controller
  and the baseline policies (inference-only, finetuning-only, temporal sharing, static split).
* `jgraph.coserve.workload`: Poisson/bursty arrivals, ShareGPT-shaped synthetic lengths,
  JSONL traces and an open-loop load client.
* `jgraph.coserve.serve`: the OpenAI-compatible server behind `jgraph serve`.

References:
    Oliaro et al., "FlexLLM: Token-Level Co-Serving of LLM Inference and Finetuning with SLO
    Guarantees", NSDI 2026 (arXiv 2402.18789).
"""

from jgraph.coserve._backward import backward_steps as backward_steps
from jgraph.coserve._config import CoServeConfig as CoServeConfig
from jgraph.coserve._config import LlamaConfig as LlamaConfig
from jgraph.coserve._config import LoraConfig as LoraConfig
from jgraph.coserve._demo import demo as demo
from jgraph.coserve._engine import CoServeEngine as CoServeEngine
from jgraph.coserve._lora import AdapterBank as AdapterBank
from jgraph.coserve._lora import init_lora as init_lora
from jgraph.coserve._lora import merge_lora as merge_lora
from jgraph.coserve._model import init_params as init_params
from jgraph.coserve._report import StepReport as StepReport
from jgraph.coserve._step import CoServeState as CoServeState
from jgraph.coserve._step import StepBatch as StepBatch
from jgraph.coserve._step import StepOutput as StepOutput
from jgraph.coserve._step import empty_batch as empty_batch
from jgraph.coserve._step import init_state as init_state
from jgraph.coserve._step import make_coserve_step as make_coserve_step

__all__ = [
    "AdapterBank",
    "CoServeConfig",
    "CoServeEngine",
    "CoServeState",
    "LlamaConfig",
    "LoraConfig",
    "StepBatch",
    "StepOutput",
    "StepReport",
    "backward_steps",
    "demo",
    "empty_batch",
    "init_lora",
    "init_params",
    "init_state",
    "make_coserve_step",
    "merge_lora",
]
