"""Foundations shared by two or more jgraph subpackages.

`core` imports nothing else from jgraph. It holds the error type and validators
used by every config, the demo report type, benchmark
helpers (timing, provenance, JSON results), atomic file writes, progress bars and mesh axis names.
The Pallas plumbing (platforms, Triton tile rules, compiler params, CUDA export) is in the public
submodule `jgraph.core.pallas`, imported on its own so that ``import jgraph.core`` stays free of JAX.
"""

from jgraph.core._axes import DATA as DATA
from jgraph.core._axes import MODEL as MODEL
from jgraph.core._axes import STAGE as STAGE
from jgraph.core._bench import Timing as Timing
from jgraph.core._bench import environment as environment
from jgraph.core._bench import format_table as format_table
from jgraph.core._bench import time_call as time_call
from jgraph.core._bench import write_results as write_results
from jgraph.core._demo import DemoReport as DemoReport
from jgraph.core._errors import ConfigError as ConfigError
from jgraph.core._errors import check_choice as check_choice
from jgraph.core._errors import check_int as check_int
from jgraph.core._errors import check_number as check_number
from jgraph.core._io import atomic_write_bytes as atomic_write_bytes
from jgraph.core._io import atomic_write_json as atomic_write_json
from jgraph.core._io import atomic_write_text as atomic_write_text
from jgraph.core._progress import progress as progress
from jgraph.core._progress import progress_enabled as progress_enabled

__all__ = [
    "DATA",
    "MODEL",
    "STAGE",
    "ConfigError",
    "DemoReport",
    "Timing",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_choice",
    "check_int",
    "check_number",
    "environment",
    "format_table",
    "progress",
    "progress_enabled",
    "time_call",
    "write_results",
]
