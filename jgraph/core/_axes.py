"""Mesh axis names shared by every subpackage; never scatter string literals.

`pipeline` shards stages over `STAGE` and data over `DATA`; `coserve` uses
`DATA` and `MODEL` (tensor parallelism, from which LoRA shardings are derived).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DATA", "MODEL", "STAGE"]

STAGE: Final = "stage"
DATA: Final = "data"
MODEL: Final = "model"
