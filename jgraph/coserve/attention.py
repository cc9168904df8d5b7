"""Paged KV cache: ragged causal GQA over a page pool, and writes into it.

`paged_attention_reference` is the pure-JAX reference (every backend);
`paged_attention_pallas` the Pallas kernel (Triton on GPU, the interpreter on CPU), picked by
``CoServeConfig.attention_impl``; `write_pages` scatters new K/V rows through the page table;
`INVALID` marks padding rows and unused pages.
"""

from jgraph.coserve._paged import INVALID as INVALID
from jgraph.coserve._paged import paged_attention_reference as paged_attention_reference
from jgraph.coserve._paged import write_pages as write_pages
from jgraph.coserve._paged_pallas import paged_attention_pallas as paged_attention_pallas

__all__ = [
    "INVALID",
    "paged_attention_pallas",
    "paged_attention_reference",
    "write_pages",
]
