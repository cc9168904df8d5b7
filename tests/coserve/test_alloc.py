"""The page/slot allocator: lowest ids first, conservation, and misuse raises."""

import pytest

from jgraph.coserve._alloc import AllocError, IdPool


def test_allocate_free_and_conservation():
    pool = IdPool(5, name="page")
    a = pool.allocate(2)
    b = pool.allocate(1)
    assert (a, b) == ((0, 1), (2,))
    assert (pool.n_free, pool.n_held) == (2, 3)
    pool.check([a, b])
    pool.free([1])
    assert pool.free_ids() == (1, 3, 4)
    pool.take([4])
    pool.check([(0,), b, (4,)])
    assert pool.allocate(2) == (1, 3)
    assert pool.n_free == 0


def test_misuse_raises():
    pool = IdPool(3, name="slot")
    held = pool.allocate(2)
    with pytest.raises(AllocError, match="double free of slots"):
        pool.free([2])  # never handed out
    pool.free([held[0]])
    with pytest.raises(AllocError, match="double free"):
        pool.free([held[0]])
    with pytest.raises(AllocError, match="not all free"):
        pool.take([held[1]])  # held already: handing it out twice
    with pytest.raises(AllocError, match="not all free and distinct"):
        pool.take([0, 0])
    with pytest.raises(AllocError, match="asked for 3 slots, 2 free"):
        pool.allocate(3)
    with pytest.raises(AllocError, match="double free"):
        pool.free([7])  # out of range


def test_check_catches_leaks_and_double_holders():
    pool = IdPool(4, name="page")
    a, b = pool.allocate(2), pool.allocate(1)
    pool.check([a, b])
    with pytest.raises(AllocError, match="leak: 2 held \\+ 1 free != 4"):
        pool.check([a])  # b's page is neither free nor accounted for
    with pytest.raises(AllocError, match="held twice"):
        pool.check([a, a])
    with pytest.raises(AllocError, match="both held and free"):
        pool.check([a, b, (3,)])
