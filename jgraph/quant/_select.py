"""Which layers DGMS quantizes: one rule for the Linen and the NNX transforms."""

from __future__ import annotations

import re
from collections.abc import Sequence

from jgraph.core import ConfigError
from jgraph.quant._config import DGMSConfig

__all__ = ["choose_layers"]


def choose_layers(
    names: Sequence[str], kinds: Sequence[str], config: DGMSConfig, *, family: str
) -> list[bool]:
    """Marks the layers to quantize, given their paths and kinds in call order.

    By default every Conv and Dense except the first Conv and the last Dense; a
    model without Conv (an MLP) keeps its first Dense in full precision
    instead. ``config.layers`` (a regex) replaces the default and
    ``config.exclude`` removes matches.

    Args:
        names: module paths, in call order.
        kinds: ``"conv"`` or ``"dense"`` for each path.
        config: the DGMS config holding the patterns.
        family: how the error names the layer types (e.g. ``"Conv/Dense"``).

    Returns:
        One flag per layer.

    Raises:
        ConfigError: nothing is selected; the message lists every layer found.
    """
    if config.layers is None:
        convs = [n for n, k in zip(names, kinds, strict=True) if k == "conv"]
        denses = [n for n, k in zip(names, kinds, strict=True) if k == "dense"]
        skip = set((convs[:1] or denses[:1]) + denses[-1:])
        chosen = [n not in skip for n in names]
    else:
        chosen = [re.search(config.layers, n) is not None for n in names]
    if config.exclude is not None:
        chosen = [
            c and re.search(config.exclude, n) is None for c, n in zip(chosen, names, strict=True)
        ]
    if not any(chosen):
        listing = ", ".join(f"{n} ({k})" for n, k in zip(names, kinds, strict=True)) or "none"
        field, value = (
            ("DGMSConfig.layers", config.layers)
            if config.layers is not None or config.exclude is None
            else ("DGMSConfig.exclude", config.exclude)
        )
        raise ConfigError(
            field,
            value,
            f"selects no layer to quantize; the model's {family} layers are: {listing}",
            "pass a regex that matches one of those module paths",
        )
    return chosen
