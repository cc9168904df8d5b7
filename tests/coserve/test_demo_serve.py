"""Client-side TTFT/TPOT of the server demo (the demo itself runs in tests/test_demo.py)."""

import pytest

from jgraph.coserve._demo_serve import stream_timings


def test_stream_timings_from_chunk_arrivals():
    # Sent at 10.0; chunks at 10.5, 10.7, 11.5 carrying 5 tokens: TPOT = 1.0 s / 4 tokens.
    assert stream_timings(10.0, [10.5, 10.7, 11.5], 5) == (0.5, 0.25)
    assert stream_timings(10.0, [10.25], 1) == (0.25, None)
    with pytest.raises(ValueError, match="no text"):
        stream_timings(10.0, [], 3)
