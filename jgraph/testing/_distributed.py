"""Real multi-process JAX runs on one machine (``jax.distributed`` over gloo).

Tests of multi-host code start N Python processes on the CPU, each with its own
fake devices, joined through a coordinator on 127.0.0.1. `run_distributed`
prepends the initialisation to a script, runs the processes, and returns their
stdout; any failure or time-out kills the others and reports every stderr.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

__all__ = ["run_distributed"]

_PRELUDE = """\
import os
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", int(os.environ["JGRAPH_DEVICES_PER_PROCESS"]))
jax.distributed.initialize(
    os.environ["JGRAPH_COORDINATOR"],
    num_processes=int(os.environ["JGRAPH_NUM_PROCESSES"]),
    process_id=int(os.environ["JGRAPH_PROCESS_ID"]),
)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_distributed(
    script: str,
    *,
    num_processes: int = 2,
    devices_per_process: int = 1,
    timeout: float = 180.0,
) -> list[str]:
    """Runs ``script`` in ``num_processes`` JAX processes joined by ``jax.distributed``.

    Inside the script, JAX is initialised: ``jax.process_index()``,
    ``jax.devices()`` (all processes' devices) and collectives work as on a
    multi-host cluster.

    Args:
        script: Python source run in every process after the initialisation.
        num_processes: how many processes.
        devices_per_process: fake CPU devices in each process.
        timeout: seconds for the whole run.

    Returns:
        Each process's stdout, in process order.

    Raises:
        AssertionError: a process failed or the run timed out; the message holds
            every process's exit status and the end of its stderr.
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JGRAPH_COORDINATOR": f"127.0.0.1:{_free_port()}",
        "JGRAPH_NUM_PROCESSES": str(num_processes),
        "JGRAPH_DEVICES_PER_PROCESS": str(devices_per_process),
    }
    code = _PRELUDE + textwrap.dedent(script)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={**env, "JGRAPH_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num_processes)
    ]
    outputs: list[tuple[int | None, str, str]] = []
    timed_out = False
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                p.kill()
                out, err = p.communicate()
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if timed_out or any(rc != 0 for rc, _, _ in outputs):
        report = "\n".join(
            f"--- process {i}: exit {rc}\n{err[-2000:]}" for i, (rc, _, err) in enumerate(outputs)
        )
        reason = f"timed out after {timeout}s" if timed_out else "a process failed"
        raise AssertionError(f"run_distributed: {reason}\n{report}")
    return [out for _, out, _ in outputs]
