"""Workloads, JSONL traces and the load client (`jgraph.coserve.workload`).

The load client runs on an event loop with virtual time: when every task is waiting on a
timer, the loop jumps its clock to the next timer instead of sleeping, so latencies are exact
and the tests take milliseconds.
"""

import asyncio
import itertools
import json

import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.coserve.workload import (
    LengthDistribution,
    RequestRecord,
    TraceRequest,
    WorkloadConfig,
    arrival_times,
    load_summary,
    make_trace,
    read_trace,
    run_load_async,
    slo_attainment,
    synthetic_finetune_dataset,
    write_trace,
)

# --- arrivals and lengths ---------------------------------------------------------------


@pytest.mark.parametrize(("rate", "cv"), [(5.0, 1.0), (20.0, 3.0), (0.5, 0.5)])
def test_arrival_rate_and_cv_match(rate, cv):
    t = arrival_times(rate, 20_000, cv=cv, seed=3)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert np.all(gaps >= 0)
    # sampling error, not float error: 20,000 seeded draws put the mean within cv / sqrt(n)
    # (<= 2.1% for cv <= 3) of 1/rate and the spread within a few percent of cv
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.07)


def test_arrivals_are_seeded():
    a = arrival_times(2.0, 50, cv=2.0, seed=1)
    assert np.array_equal(a, arrival_times(2.0, 50, cv=2.0, seed=1))
    assert not np.array_equal(a, arrival_times(2.0, 50, cv=2.0, seed=2))
    with pytest.raises(ConfigError, match="rate_per_s"):
        arrival_times(0.0, 5, seed=0)


def test_lengths_are_clipped_and_shaped_like_the_documented_distribution():
    dist = LengthDistribution()
    p, r = dist.sample(20_000, seed=0)
    assert p.min() >= 1
    assert p.max() <= 2048
    assert r.min() >= 1
    assert r.max() <= 2048
    # sampling error of the median of 20,000 seeded log-normal draws: well under 5%
    assert np.median(p) == pytest.approx(80, rel=0.05)
    assert np.median(r) == pytest.approx(200, rel=0.05)
    assert 140 < p.mean() < 190  # about 165: the long right tail
    small = dist.scaled(1 / 16, max_prompt_len=40, max_response_len=24)
    p, r = small.sample(5_000, seed=0)
    assert p.max() == 40  # the clip is reached by the tail
    assert r.max() == 24
    assert np.median(p) == pytest.approx(5, abs=1)


def test_make_trace_tokens_and_text():
    lengths = LengthDistribution(max_prompt_len=32, max_response_len=16)
    cfg = WorkloadConfig(rate_per_s=10.0, num_requests=200, vocab_size=50, lengths=lengths, seed=4)
    trace = make_trace(cfg)
    assert trace == make_trace(cfg)
    assert all(isinstance(r.prompt, tuple) and 1 <= len(r.prompt) <= 32 for r in trace)
    assert max(max(r.prompt) for r in trace) < 50
    assert all(1 <= r.max_tokens <= 16 for r in trace)
    arrivals = [r.arrival_s for r in trace]
    assert arrivals == sorted(arrivals)
    text = make_trace(
        WorkloadConfig(rate_per_s=1.0, num_requests=20, prompt_kind="text", lengths=lengths)
    )
    assert all(isinstance(r.prompt, str) and 1 <= len(r.prompt) <= 32 for r in text)
    with pytest.raises(ConfigError, match="Poisson"):
        WorkloadConfig(rate_per_s=1.0, num_requests=1, cv=2.0)


def test_synthetic_finetune_dataset_is_learnable_and_bounded():
    data = synthetic_finetune_dataset(50, min_len=8, max_len=20, seed=0, vocab_size=30)
    assert len(data) == 50
    for sample in data:
        assert 8 <= len(sample) <= 20
        assert all(isinstance(t, int) and 0 <= t < 30 for t in sample)
        steps = {(b - a) % 30 for a, b in itertools.pairwise(sample)}
        assert len(steps) == 1  # a constant stride: the next token follows from the last two
        assert steps.pop() in (1, 2, 3, 4)
    texts = synthetic_finetune_dataset(10, min_len=12, max_len=40, seed=0, kind="text")
    assert all(isinstance(t, str) and 12 <= len(t) <= 40 and " = " in t for t in texts)
    with pytest.raises(ConfigError, match="max_len"):
        synthetic_finetune_dataset(1, min_len=8, max_len=4, seed=0)


# --- JSONL traces -----------------------------------------------------------------------


def test_trace_jsonl_round_trip(tmp_path):
    trace = [
        TraceRequest(arrival_s=0.0, prompt=(1, 2, 3), max_tokens=4),
        TraceRequest(arrival_s=0.5, prompt="hello", max_tokens=2, model="ft-1"),
    ]
    path = write_trace(tmp_path / "t.jsonl", trace)
    assert read_trace(path) == trace
    assert len(path.read_text().splitlines()) == 2
    (tmp_path / "blank.jsonl").write_text("\n" + path.read_text() + "\n\n")
    assert read_trace(tmp_path / "blank.jsonl") == trace
    synth = make_trace(WorkloadConfig(rate_per_s=3.0, num_requests=30))
    assert read_trace(write_trace(tmp_path / "s.jsonl", synth)) == synth


GOOD = '{"arrival_s": 0.0, "prompt": "hi", "max_tokens": 3}'


@pytest.mark.parametrize(
    ("line", "where", "problem"),
    [
        ('{"arrival_s": 1.0, "prompt": "hi"', ":2", "not JSON"),
        ("[1, 2]", ":2", "not a JSON object"),
        ('{"arrival_s": 1.0, "prompt": "hi"}', ":2.max_tokens", "missing field"),
        ('{"arrival_s": 1.0, "prompt": "hi", "max_tokens": 3, "n": 2}', ":2.n", "unknown field"),
        ('{"arrival_s": 1.0, "prompt": "hi", "max_tokens": 0}', ":2.max_tokens", ">= 1"),
        (
            '{"arrival_s": 1.0, "prompt": "hi", "max_tokens": 2.5}',
            ":2.max_tokens",
            "must be an int",
        ),
        ('{"arrival_s": -1.0, "prompt": "hi", "max_tokens": 3}', ":2.arrival_s", ">= 0"),
        ('{"arrival_s": 1.0, "prompt": [1, -2], "max_tokens": 3}', ":2.prompt", "token ids"),
        ('{"arrival_s": 1.0, "prompt": [1, 2.0], "max_tokens": 3}', ":2.prompt", "token ids"),
        ('{"arrival_s": 1.0, "prompt": "", "max_tokens": 3}', ":2.prompt", "non-empty"),
        ('{"arrival_s": 1.0, "prompt": "x", "max_tokens": 3, "model": 7}', ":2.model", "string"),
    ],
)
def test_a_malformed_trace_line_is_refused_naming_line_and_field(tmp_path, line, where, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=problem) as err:
        read_trace(path)
    assert err.value.field == f"{path}{where}"


def test_an_unsorted_trace_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"arrival_s": 2.0, "prompt": "a", "max_tokens": 1}\n' + GOOD + "\n")
    with pytest.raises(ConfigError, match="earlier than the line above") as err:
        read_trace(path)
    assert err.value.field.endswith(":2.arrival_s")


# --- the load client ------------------------------------------------------------------------


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer instead of sleeping."""

    def __init__(self):
        super().__init__()
        self.now = 0.0
        real, loop = self._selector, self

        class Selector:
            def select(self, timeout=None):
                if timeout is not None and timeout > 0:
                    loop.now += timeout
                    timeout = 0
                return real.select(timeout)

            def __getattr__(self, name):
                return getattr(real, name)

        self._selector = Selector()

    def time(self):
        return self.now


def run_virtual(coro_fn):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro_fn(loop)), loop
    finally:
        loop.close()


# Each request: (arrival, ttft delay after arrival, gap between tokens, tokens). Powers of two
# keep every sum exact.
PLAN = [(0.0, 0.25, 0.125, 4), (0.5, 1.0, 0.0625, 3), (0.75, 0.5, 0.5, 1)]


def plan_trace():
    return [TraceRequest(arrival_s=a, prompt="p", max_tokens=n) for a, _, _, n in PLAN]


async def fake_send(req):
    _, delay, gap, _ = next(p for p in PLAN if p[0] == req.arrival_s)
    await asyncio.sleep(delay)
    for k in range(req.max_tokens):
        if k:
            await asyncio.sleep(gap)
        yield {"text": "x"}


def test_load_client_records_exact_ttft_and_tpot_on_a_virtual_clock():
    records, loop = run_virtual(lambda loop: run_load_async(plan_trace(), fake_send))
    assert [r.index for r in records] == [0, 1, 2]
    for rec, (arrival, delay, gap, n) in zip(records, PLAN, strict=True):
        assert rec.error is None
        assert rec.arrival_s == arrival
        assert rec.ttft_s == delay
        assert rec.output_tokens == n
        assert rec.tpot_s == (gap if n > 1 else None)
        assert rec.e2e_s == delay + gap * (n - 1)
    # The requests overlapped (open loop): the run took as long as the slowest, not the sum.
    assert loop.now == max(a + d + g * (n - 1) for a, d, g, n in PLAN)
    assert slo_attainment(records, tpot_s=0.1, ttft_s=0.6) == pytest.approx(1 / 3)
    assert slo_attainment(records, tpot_s=0.2, ttft_s=1.0) == 1.0
    assert slo_attainment(records, tpot_s=0.2, ttft_s=0.3) == pytest.approx(1 / 3)


def test_load_client_counts_tokens_per_chunk_and_records_failures():
    async def send(req):
        await asyncio.sleep(0.5)
        if req.max_tokens == 9:
            raise ConnectionError("refused")
        yield [7, 8]  # a chunk of two tokens
        await asyncio.sleep(0.25)
        yield []  # keep-alive: no token
        yield [9]

    trace = [
        TraceRequest(arrival_s=0.0, prompt="a", max_tokens=3),
        TraceRequest(arrival_s=0.0, prompt="b", max_tokens=9),
    ]
    (ok, bad), _ = run_virtual(lambda loop: run_load_async(trace, send, tokens_of=len))
    assert ok.output_tokens == 3
    assert ok.ttft_s == 0.5
    assert ok.tpot_s == 0.125  # 0.25 s between the first and last token, over 2 gaps
    assert bad.error == "ConnectionError('refused')"
    assert bad.ttft_s is None
    assert slo_attainment([ok, bad], tpot_s=1.0, ttft_s=1.0) == 0.5
    summary = load_summary([ok, bad])
    assert summary["errors"] == 1.0
    assert summary["mean_ttft_s"] == 0.5
    assert summary["output_tokens_per_s"] == pytest.approx(3 / 0.75)


def test_load_client_runs_a_sync_send_in_a_thread():
    held = {}

    def send(req):
        for _ in range(req.max_tokens):
            held["loop"].now += 0.125  # the worker thread advances the virtual clock per token
            yield "tok"

    def start(loop):
        held["loop"] = loop
        return run_load_async([TraceRequest(arrival_s=1.0, prompt="a", max_tokens=3)], send)

    (rec,), _ = run_virtual(start)
    assert rec.arrival_s == 1.0
    assert rec.output_tokens == 3
    assert rec.ttft_s == 0.125
    assert rec.tpot_s == 0.125


def test_slo_attainment_needs_records():
    with pytest.raises(ConfigError, match="no requests"):
        slo_attainment([], tpot_s=0.1, ttft_s=1.0)
    one = RequestRecord(
        index=0, arrival_s=0.0, first_token_s=0.2, last_token_s=0.2, finish_s=0.2, output_tokens=1
    )
    assert one.tpot_s is None
    assert slo_attainment([one], tpot_s=1e-9, ttft_s=0.2) == 1.0  # judged on TTFT alone
    assert slo_attainment([one], tpot_s=1.0, ttft_s=0.1) == 0.0
    assert json.dumps(load_summary([one]))  # plain floats
