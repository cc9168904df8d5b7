"""`NoPlanError`: the one error every planner raises when it gives up."""

from __future__ import annotations

from jgraph.core import ConfigError

__all__ = ["NoPlanError"]


class NoPlanError(ConfigError):
    """A planner found no plan: nothing fits in memory, or it hit a search cap.

    A `ConfigError`, so the CLI prints it as one line naming the fix (more
    memory or devices, a smaller batch, a larger cap). ``problem`` says why in
    full; callers show it whole.
    """
