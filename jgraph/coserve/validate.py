"""Checks of what a user hands the co-serving engine, run on the host before any tracing:
base weights (`check_params`), LoRA adapters (`check_adapter`), finetuning samples
(`check_token_samples`) and prompts (`check_prompt`). Each raises `jgraph.core.ConfigError`
naming the leaf or field, the value and the fix.
"""

from jgraph.coserve._validate import check_adapter as check_adapter
from jgraph.coserve._validate import check_params as check_params
from jgraph.coserve._validate import check_prompt as check_prompt
from jgraph.coserve._validate import check_token_samples as check_token_samples

__all__ = [
    "check_adapter",
    "check_params",
    "check_prompt",
    "check_token_samples",
]
