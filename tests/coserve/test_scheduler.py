"""The pure scheduler: hand-computed plans (decode first, chunked prefill, FCFS admission by
free pages, page grants, preemption of the most recently admitted request, finetuning in the
leftover budget), and random submit/step sequences through the request table checking the
invariants."""

import hypothesis.strategies as st
from hypothesis import given, settings

from jgraph.coserve._requests import Request, RequestTable
from jgraph.coserve._scheduler import Admission, Queued, Row, Running, plan

# page_size 4 throughout the hand-computed cases.
A = Running(rid=0, order=0, slot=0, n_tokens=5, cached=4, pages=(0, 1))  # decoding pos 4
B = Running(rid=1, order=1, slot=1, n_tokens=10, cached=4, pages=(2, 3, 4))  # prefilling
C = Queued(rid=2, n_tokens=3)


def _plan(running, queue, free_pages, free_slots, budget, **kw):
    return plan(
        running=running, queue=queue, free_pages=free_pages, free_slots=free_slots,
        token_budget=budget, page_size=4, **kw,
    )  # fmt: skip


def test_decode_first_then_chunked_prefill_within_the_budget():
    p = _plan([B, A], [C], [5, 6, 7], [2], 6, ft_active=True, ft_fwd_left=5)
    assert p.rows == (
        Row(rid=0, start=4, count=1, kind="decode", samples=True),
        Row(rid=1, start=4, count=5, kind="prefill", samples=False),  # 6 left, 5 fit
    )
    assert (p.admitted, p.grants, p.preempted, p.ft_tokens, p.backward) == ((), (), (), 0, False)
    assert (p.decode_tokens, p.prefill_tokens, p.tokens) == (1, 5, 6)


def test_admission_by_free_pages_and_finetuning_in_the_leftover():
    # budget 12: decode 1 + B's last 6 prompt tokens + C (3 tokens, ceil(4/4) = 1 page) = 10,
    # 2 left for finetuning, capped at ft_budget=1; its forward is not complete: no backward.
    p = _plan([A, B], [C], [5, 6, 7], [2], 12, ft_active=True, ft_fwd_left=5, ft_budget=1)
    assert p.rows[1] == Row(rid=1, start=4, count=6, kind="prefill", samples=True)
    assert p.rows[2] == Row(rid=2, start=0, count=3, kind="prefill", samples=True)
    assert p.admitted == (Admission(rid=2, slot=2, pages=(5,)),)
    assert (p.ft_tokens, p.backward, p.tokens) == (1, False, 11)
    # Without a cap the forward completes (2 of 2 tokens left) and the backward runs.
    p = _plan([A, B], [C], [5], [2], 12, ft_active=True, ft_fwd_left=2)
    assert (p.ft_tokens, p.backward) == (2, True)
    assert _plan([A], [], [], [], 4, ft_active=True, ft_fwd_left=0).backward
    assert not _plan([A], [], [], [], 4, ft_active=True, allow_backward=False).backward
    assert not _plan([A], [], [], [], 4, ft_fwd_left=3).backward  # no sample loaded


def test_fcfs_admission_blocks_behind_a_head_that_does_not_fit():
    big, small = Queued(rid=3, n_tokens=9), Queued(rid=4, n_tokens=2)  # 3 pages, 1 page
    p = _plan([], [big, small], [0, 1], [0, 1], 16)
    assert (p.admitted, p.rows) == ((), ())
    p = _plan([], [big, small], [0, 1, 2, 3], [0, 1], 16)
    assert p.admitted == (
        Admission(rid=3, slot=0, pages=(0, 1, 2)),
        Admission(rid=4, slot=1, pages=(3,)),
    )
    assert _plan([], [big, small], [0, 1, 2, 3], [], 16).admitted == ()  # no slot


def test_decode_grants_a_page_when_it_crosses_a_page_boundary():
    a = Running(rid=0, order=0, slot=0, n_tokens=9, cached=8, pages=(3, 1))  # pos 8: page 2
    p = _plan([a], [], [6, 7], [1], 4)
    assert p.grants == ((0, 6),)
    assert p.rows == (Row(rid=0, start=8, count=1, kind="decode", samples=True),)


def test_kv_pressure_preempts_the_most_recently_admitted():
    a = Running(rid=0, order=0, slot=0, n_tokens=9, cached=8, pages=(0, 1))  # needs a page
    b = Running(rid=1, order=5, slot=1, n_tokens=6, cached=5, pages=(2, 3))  # decoding
    c = Running(rid=2, order=7, slot=2, n_tokens=7, cached=3, pages=(5, 4))  # newest
    p = _plan([c, a, b], [Queued(rid=9, n_tokens=1)], [], [3], 8)
    assert p.preempted == (2,)
    assert p.grants == ((0, 4),)  # the lowest of c's freed pages
    assert [(r.rid, r.kind) for r in p.rows] == [(0, "decode"), (1, "decode")]
    assert p.admitted == ()  # nothing is admitted in a step that preempted


def test_the_newest_request_preempts_itself_and_older_ones_keep_running():
    old = Running(rid=0, order=0, slot=0, n_tokens=6, cached=5, pages=(0, 1))
    new = Running(rid=1, order=1, slot=1, n_tokens=9, cached=8, pages=(2, 3))  # needs one
    p = _plan([new, old], [], [], [], 8)
    assert p.preempted == (1,)
    assert p.rows == (Row(rid=0, start=5, count=1, kind="decode", samples=True),)
    # Two victims: the newest first, until the oldest request gets its page.
    mid = Running(rid=2, order=2, slot=2, n_tokens=3, cached=1, pages=(4,))
    newest = Running(rid=3, order=3, slot=3, n_tokens=2, cached=0, pages=())
    a = Running(rid=0, order=0, slot=0, n_tokens=9, cached=8, pages=(0, 1))
    p = _plan([a, mid, newest], [], [], [], 8)
    assert p.preempted == (3, 2)
    assert p.grants == ((0, 4),)


def test_inference_cap_limits_inference_rows_and_finetuning_takes_the_rest():
    # Cap 4 of 12: A's decode (1) + 3 of B's 6 prompt tokens; no room to admit C. Finetuning
    # gets 12 - 4 = 8 of its 20 tokens (forward not complete: no backward).
    p = _plan([A, B], [C], [5, 6, 7], [2], 12, ft_active=True, ft_fwd_left=20, inference_cap=4)
    assert p.rows == (
        Row(rid=0, start=4, count=1, kind="decode", samples=True),
        Row(rid=1, start=4, count=3, kind="prefill", samples=False),
    )
    assert (p.admitted, p.ft_tokens, p.backward, p.tokens) == ((), 8, False, 12)
    # Without the cap: decode 1 + prefill 6 + C 3 = 10 inference rows, 2 for finetuning.
    p = _plan([A, B], [C], [5, 6, 7], [2], 12, ft_active=True, ft_fwd_left=20)
    assert (p.decode_tokens, p.prefill_tokens, p.ft_tokens) == (1, 9, 2)
    # A cap above the budget changes nothing.
    big = _plan([A, B], [C], [5, 6, 7], [2], 12, ft_active=True, ft_fwd_left=20, inference_cap=99)
    assert big == p
    # Cap 1: only the oldest decode row; ft_budget still caps finetuning (5 of 11 free rows).
    p = _plan([A, B], [C], [5, 6, 7], [2], 12, ft_active=True, ft_fwd_left=20, inference_cap=1,
              ft_budget=5)  # fmt: skip
    assert (p.rows, p.ft_tokens) == (
        (Row(rid=0, start=4, count=1, kind="decode", samples=True),),
        5,
    )


def test_inference_cap_zero_runs_finetuning_only_and_preempts_nothing():
    a = Running(rid=0, order=0, slot=0, n_tokens=9, cached=8, pages=(0, 1))  # needs a page
    p = _plan([a, B], [C], [], [2], 12, ft_active=True, ft_fwd_left=5, inference_cap=0)
    assert (p.rows, p.admitted, p.grants, p.preempted) == ((), (), (), ())
    assert (p.ft_tokens, p.backward) == (5, True)  # the whole forward fits: backward too
    # Negative check: the same state without the cap preempts the newest request (B).
    assert _plan([a, B], [C], [], [2], 12).preempted == (1,)


# -- random sequences through the request table ----------------------------------------------


def _token(rid, pos):
    """The "model": the next token depends only on the request and position (like greedy)."""
    return (rid * 31 + pos * 7) % 101


@settings(max_examples=150, deadline=None)
@given(
    page_size=st.integers(1, 3),
    num_pages=st.integers(2, 6),
    max_requests=st.integers(2, 4),
    budget=st.integers(1, 8),
    reqs=st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 10), st.integers(0, 3)),
        min_size=2,
        max_size=8,
    ),
)
def test_random_submits_and_steps_keep_the_invariants(
    page_size, num_pages, max_requests, budget, reqs
):
    table = RequestTable(
        max_requests=max_requests, num_pages=num_pages, max_pages_per_request=num_pages
    )
    want = {}
    arrivals = {}
    for rid, (plen, new, at) in enumerate(reqs):
        if plen + new > num_pages * page_size:
            continue  # refused at submit
        prompt = [rid] * plen
        arrivals.setdefault(at, []).append(Request(rid, prompt, plen, new, -1, 0.0, None))
        want[rid] = [_token(rid, plen - 1 + k) for k in range(new)]
    preemptions = 0
    for step in range(400):
        table.queue.extend(arrivals.pop(step, []))
        if not table and not arrivals:
            break
        orders = {r.rid: r.order for r in table.running.values()}
        p = table.plan(token_budget=budget, page_size=page_size)
        assert p.tokens <= budget
        rids = [r.rid for r in p.rows]
        assert len(rids) == len(set(rids))  # a request gets one row range per step
        kinds = [r.kind for r in p.rows]
        assert kinds == sorted(kinds)  # "decode" rows before "prefill" rows
        # Victims are the most recently admitted, newest first.
        newest = sorted(orders, key=orders.get, reverse=True)[: len(p.preempted)]
        assert list(p.preempted) == newest
        preemptions += len(p.preempted)
        table.apply(p)  # raises on a page or slot handed out twice
        table.check()
        sampled = {r.rid: _token(r.rid, r.start + r.count - 1) for r in p.rows if r.samples}
        table.finish_step(p, sampled)
        table.check()
    assert not arrivals
    assert not table, "requests starved"
    assert table.results == want  # preemption never changes an output
    assert table.pages.n_free == num_pages
    assert table.slots.n_free == max_requests
