"""Fixed-capacity allocators of the host side: KV pages and request slots (pure Python, no jax).

An `IdPool` hands out integer ids ``0 .. total-1``. Every id is either free or held, never both
and never handed out twice: taking an id that is not free, or freeing one that is not held,
raises instead of corrupting the KV cache silently (two requests writing the same page).
`IdPool.check` verifies the conservation invariant ``free + held == total``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AllocError", "IdPool"]


class AllocError(RuntimeError):
    """An allocator was misused (double allocation, double free, over-allocation): a bug in
    the caller, never a user error."""


class IdPool:
    """A pool of ids ``0 .. total-1`` (KV pages or request slots).

    Ids are handed out lowest first, so the allocation sequence is deterministic.

    Args:
        total: number of ids.
        name: what the ids are (error messages).

    Example:
        >>> pool = IdPool(4, name="page")
        >>> pool.allocate(2)
        (0, 1)
        >>> pool.free([0]); pool.n_free, pool.n_held
        (3, 1)
    """

    def __init__(self, total: int, *, name: str = "id") -> None:
        if total < 0:
            raise AllocError(f"{name} pool of negative size {total}")
        self.total, self.name = total, name
        self._free = set(range(total))

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def n_held(self) -> int:
        return self.total - len(self._free)

    def free_ids(self) -> tuple[int, ...]:
        """The free ids, ascending (what a planner may hand out, in this order)."""
        return tuple(sorted(self._free))

    def is_free(self, i: int) -> bool:
        return i in self._free

    def allocate(self, n: int) -> tuple[int, ...]:
        """Takes the ``n`` lowest free ids.

        Raises:
            AllocError: fewer than ``n`` are free.
        """
        if n > len(self._free):
            raise AllocError(f"asked for {n} {self.name}s, {len(self._free)} free")
        ids = tuple(sorted(self._free)[:n])
        self._free.difference_update(ids)
        return ids

    def take(self, ids: Iterable[int]) -> None:
        """Takes exactly these ids (a plan's grants).

        Raises:
            AllocError: an id is held already, out of range, or listed twice.
        """
        ids = list(ids)
        bad = [i for i in ids if i not in self._free]
        if bad or len(set(ids)) != len(ids):
            raise AllocError(f"{self.name}s {ids} are not all free and distinct (bad: {bad})")
        self._free.difference_update(ids)

    def free(self, ids: Iterable[int]) -> None:
        """Returns ids to the pool.

        Raises:
            AllocError: an id is free already (double free), out of range, or listed twice.
        """
        ids = list(ids)
        bad = [i for i in ids if i in self._free or not 0 <= i < self.total]
        if bad or len(set(ids)) != len(ids):
            raise AllocError(f"double free of {self.name}s {bad or ids}")
        self._free.update(ids)

    def check(self, held: Iterable[Iterable[int]]) -> None:
        """Verifies conservation against the holders' id lists: no id held twice, none both
        held and free, and ``free + held == total``.

        Raises:
            AllocError: the books do not balance.
        """
        flat = [i for h in held for i in h]
        if len(set(flat)) != len(flat):
            raise AllocError(f"a {self.name} is held twice: {sorted(flat)}")
        if set(flat) & self._free:
            raise AllocError(f"{self.name}s both held and free: {sorted(set(flat) & self._free)}")
        if len(flat) + len(self._free) != self.total:
            raise AllocError(
                f"{self.name}s leak: {len(flat)} held + {len(self._free)} free != {self.total}"
            )
