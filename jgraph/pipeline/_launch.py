"""Starting a pipelined run: devices, processes, and one plan that every process shares.

`start_devices` must run before JAX starts its backend: it asks for fake CPU
devices (on a machine without accelerators) and joins ``jax.distributed`` when
several processes train together. `plan_module_graph` profiles and plans a
`ModuleGraph`; with several processes, process 0's plan is broadcast to the
others, since profiled timings differ between processes and every process
must trace the same program.

Multi-host GPU launch (one process per host, each seeing its local GPUs)::

    # on host i of N, with host 0 reachable at 10.0.0.1:
    jgraph pipeline train --model mmt-tiny --devices 16 \\
        --coordinator 10.0.0.1:8476 --num-processes N --process-id i

The mesh then spans every process's devices in ``jax.devices()`` order; stages
are laid out on consecutive device ids, so a stage's data-parallel replicas
stay on one host when its degree fits one (the planner's buddy placement).
"""

from __future__ import annotations

import json
import logging

import numpy as np

from jgraph.core import ConfigError, check_int
from jgraph.pipeline._api import plan_pipeline
from jgraph.pipeline._config import ClusterConfig, PlannerConfig
from jgraph.pipeline._plan import StagePlan
from jgraph.pipeline._profile import ModuleGraph, profile_module_graph

__all__ = ["broadcast_plan", "plan_module_graph", "start_devices"]

log = logging.getLogger(__name__)


def start_devices(
    *,
    devices: int,
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
) -> None:
    """Prepares ``devices`` JAX devices in all, over ``num_processes`` processes.

    On CPU this starts ``devices / num_processes`` fake devices per process (an
    accelerator backend keeps its real devices). With several processes it
    joins ``jax.distributed`` at ``coordinator`` (``host:port``), over gloo
    collectives on CPU. Call it before anything asks JAX for devices.

    Raises:
        ConfigError: inconsistent counts, a missing coordinator, or JAX already started.
    """
    import jax

    check_int("start_devices.devices", devices, minimum=1)
    check_int("start_devices.num_processes", num_processes, minimum=1)
    check_int("start_devices.process_id", process_id, minimum=0, maximum=num_processes - 1)
    if devices % num_processes:
        raise ConfigError(
            "start_devices.devices", devices, f"is not a multiple of num_processes={num_processes}",
            "give every process the same number of devices",
        )  # fmt: skip
    if num_processes > 1 and not coordinator:
        raise ConfigError("start_devices.coordinator", coordinator,
                          "is needed with several processes",
                          "pass host:port of process 0, e.g. 127.0.0.1:8476")  # fmt: skip
    try:
        jax.config.update("jax_num_cpu_devices", devices // num_processes)
        if num_processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except RuntimeError as exc:  # the backend already started: fine if it has the devices
        if num_processes > 1 or len(jax.devices()) < devices:
            raise ConfigError(
                "start_devices", devices, f"JAX has already started ({exc})",
                "call start_devices first thing, before any jax.devices() or computation",
            ) from exc  # fmt: skip
        log.info("JAX already started with %d devices; using them", len(jax.devices()))
    if num_processes > 1:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        log.info("process %d of %d joined %s", process_id, num_processes, coordinator)


def broadcast_plan(plan: StagePlan | None) -> StagePlan:
    """Process 0's plan, on every process (``plan`` may be None except on process 0)."""
    import jax

    if jax.process_count() == 1:
        if plan is None:
            raise ValueError("broadcast_plan: no plan on the only process")
        return plan
    from jax.experimental import multihost_utils

    text = plan.to_json().encode() if (plan is not None and jax.process_index() == 0) else b""
    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    buf = np.zeros(n, np.uint8)
    if jax.process_index() == 0:
        buf[:] = np.frombuffer(text, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return StagePlan.from_json(bytes(got.astype(np.uint8)).decode())


def plan_module_graph(
    graph: ModuleGraph,
    *,
    cluster: ClusterConfig,
    batch: int,
    config: PlannerConfig | None = None,
    planner: str = "graphpipe",
    profile_micro_batches: tuple[int, ...] = (1, 2, 4, 8),
) -> StagePlan:
    """Profiles ``graph`` on this backend and plans it (process 0 plans for everyone).

    Example:
        >>> # plan = plan_module_graph(module_model("mmt-tiny"),
        >>> #                          cluster=ClusterConfig(num_devices=8), batch=32)
    """
    import jax

    plan = None
    if jax.process_index() == 0:
        costed = profile_module_graph(graph, micro_batches=profile_micro_batches)
        plan = plan_pipeline(costed, cluster, config, batch=batch, planner=planner)  # type: ignore[arg-type]  # checked by plan_pipeline
        log.info("planned %s: %s", graph.name, json.dumps(plan.to_dict()["summary"])[:200])
    return broadcast_plan(plan)
