"""FlexLLM co-serving: LLM inference and token-level LoRA finetuning in one jitted step, under latency SLOs.

Status: not built yet; issue #5 (engine) and a later issue (server, SLO controller) builds it. Until then this package
exports nothing and `jgraph demo` reports the part as not built.
"""

__all__: list[str] = []
