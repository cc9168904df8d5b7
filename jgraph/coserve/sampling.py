"""Per-request sampling: `SamplingParams` (temperature, top_p, max_tokens, stop, seed), the
jittable batched sampler `sample_tokens` (greedy is exactly ``argmax``), per-request keys that
do not depend on the batch row (`seed_key`, `request_key`, `step_keys`), and stop strings
matched on the streamed text (`StopMatcher`, `safe_prefix_len`, `truncate_at_stop`).
"""

from jgraph.coserve._sampling import MAX_STOP_STRINGS as MAX_STOP_STRINGS
from jgraph.coserve._sampling import MIN_TEMPERATURE as MIN_TEMPERATURE
from jgraph.coserve._sampling import SamplingParams as SamplingParams
from jgraph.coserve._sampling import StopMatcher as StopMatcher
from jgraph.coserve._sampling import request_key as request_key
from jgraph.coserve._sampling import safe_prefix_len as safe_prefix_len
from jgraph.coserve._sampling import sample_tokens as sample_tokens
from jgraph.coserve._sampling import seed_key as seed_key
from jgraph.coserve._sampling import step_keys as step_keys
from jgraph.coserve._sampling import truncate_at_stop as truncate_at_stop

__all__ = [
    "MAX_STOP_STRINGS",
    "MIN_TEMPERATURE",
    "SamplingParams",
    "StopMatcher",
    "request_key",
    "safe_prefix_len",
    "sample_tokens",
    "seed_key",
    "step_keys",
    "truncate_at_stop",
]
