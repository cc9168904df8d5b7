"""Co-serving workloads and a load client: Poisson and bursty (Gamma) arrivals, ShareGPT-shaped
synthetic request lengths, a learnable synthetic finetuning set, JSONL traces (bring your own
with `read_trace`), and `run_load`, which replays a trace against any send function and
records TTFT/TPOT per request (`slo_attainment`, `load_summary`); `http_sender` is the send
function that drives an OpenAI-compatible server (``jgraph serve``) over HTTP.

Example:
    >>> from jgraph.coserve.workload import WorkloadConfig, make_trace
    >>> trace = make_trace(WorkloadConfig(rate_per_s=2.0, num_requests=4, arrival="gamma", cv=3.0))
    >>> len(trace), trace[0].arrival_s <= trace[-1].arrival_s
    (4, True)
"""

from jgraph.coserve._http_load import http_sender as http_sender
from jgraph.coserve._load import RequestRecord as RequestRecord
from jgraph.coserve._load import load_summary as load_summary
from jgraph.coserve._load import run_load as run_load
from jgraph.coserve._load import run_load_async as run_load_async
from jgraph.coserve._load import slo_attainment as slo_attainment
from jgraph.coserve._workload import ARRIVAL_KINDS as ARRIVAL_KINDS
from jgraph.coserve._workload import LengthDistribution as LengthDistribution
from jgraph.coserve._workload import TraceRequest as TraceRequest
from jgraph.coserve._workload import WorkloadConfig as WorkloadConfig
from jgraph.coserve._workload import arrival_times as arrival_times
from jgraph.coserve._workload import make_trace as make_trace
from jgraph.coserve._workload import read_trace as read_trace
from jgraph.coserve._workload import synthetic_finetune_dataset as synthetic_finetune_dataset
from jgraph.coserve._workload import write_trace as write_trace

__all__ = [
    "ARRIVAL_KINDS",
    "LengthDistribution",
    "RequestRecord",
    "TraceRequest",
    "WorkloadConfig",
    "arrival_times",
    "http_sender",
    "load_summary",
    "make_trace",
    "read_trace",
    "run_load",
    "run_load_async",
    "slo_attainment",
    "synthetic_finetune_dataset",
    "write_trace",
]
