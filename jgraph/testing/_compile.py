"""Recompilation guards for jitted steps.

Every jitted step in jgraph is called with fixed-shape state, so a second call
must hit the compilation cache. `assert_no_recompile` proves it by listening to
JAX's backend-compile monitoring event, which fires once per XLA compilation
(jitted functions, and eager primitives the first time they run).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax

__all__ = ["CompilationLog", "assert_no_recompile", "compilation_log"]

# The event name JAX records around every backend compilation (jax/_src/dispatch.py).
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompilationLog:
    """Names of the functions XLA compiled while the log was open."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()

    def _listener(self, event: str, duration_secs: float, **kwargs: object) -> None:
        del duration_secs
        if event == _BACKEND_COMPILE_EVENT:
            with self._lock:
                self.names.append(str(kwargs.get("fun_name", "<unknown>")))

    @property
    def count(self) -> int:
        return len(self.names)


@contextlib.contextmanager
def compilation_log() -> Iterator[CompilationLog]:
    """Records every XLA compilation inside the ``with`` block.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = jax.jit(lambda x: x * 2)
        >>> x, y = jnp.ones(3), jnp.zeros(3)
        >>> with compilation_log() as log:
        ...     _ = f(x); _ = f(y)
        >>> log.count
        1
    """
    log = CompilationLog()
    jax.monitoring.register_event_duration_secs_listener(log._listener)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(log._listener)


@contextlib.contextmanager
def assert_no_recompile(what: str = "the block") -> Iterator[CompilationLog]:
    """Fails if anything is compiled inside the ``with`` block.

    Warm the step up (call it once) before the block and build its inputs
    outside the block (an eager ``jnp.full`` compiles too); then every call
    inside must reuse the compiled executable, e.g. with a different mix of
    requests but the same fixed-capacity shapes. A weakly typed input (from a
    Python scalar) where the warm-up had a strong one is a real recompile.

    Args:
        what: a description used in the failure message.

    Raises:
        AssertionError: naming the functions that were compiled.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> step = jax.jit(lambda s, x: s + x)
        >>> s, x = jnp.zeros(2), jnp.ones(2)
        >>> s = step(s, x)
        >>> with assert_no_recompile("step"):
        ...     s = step(s, x)
    """
    with compilation_log() as log:
        yield log
    if log.count:
        raise AssertionError(
            f"{what} recompiled {log.count} time(s): {', '.join(log.names)}; a jitted step "
            "must keep static shapes, dtypes, shardings and static arguments across calls"
        )
