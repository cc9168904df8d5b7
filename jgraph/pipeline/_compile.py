"""`compile`, importable from `jgraph.pipeline` without loading JAX until it is called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from jgraph.pipeline._plan import StagePlan
    from jgraph.pipeline._profile import ModuleGraph
    from jgraph.pipeline._runtime import LossFn, PipelineProgram

__all__ = ["compile"]


def compile(
    plan: StagePlan,
    module_graph: ModuleGraph,
    loss_fn: LossFn,
    optimizer: Any,
    *,
    mesh: Mesh | None = None,
) -> PipelineProgram:
    """Compiles ``plan`` of ``module_graph`` into a pipelined train step.

    Args:
        plan: a `StagePlan` of the graph ``profile_module_graph(module_graph)``
            returns (same node names); checked against the graph before tracing.
        module_graph: the Flax module DAG; exactly one node (the sink) feeds the loss.
        loss_fn: ``loss_fn(sink_output, targets) -> scalar``, the MEAN over the
            samples it is given (the pipeline's loss is then the batch mean; a
            loss that does not decompose over samples is not supported).
        optimizer: an ``optax.GradientTransformation``; it runs per stage on the
            stage's parameter pytree, so per-tensor transforms are exact but
            whole-model ones (``clip_by_global_norm``) see one stage at a time.
        mesh: ``plan.num_devices`` devices (any shape: they are laid out as
            ``(STAGE, DATA)`` in order); ``None`` uses the first devices of JAX.

    Returns:
        A `PipelineProgram`: ``init(params)``, ``step(state, inputs, targets)``.

    Example (8 devices; the README's "Training a plan" runs it end to end)::

        mg = module_model("mmt-tiny")
        plan = plan_pipeline(profile_module_graph(mg), ClusterConfig(num_devices=8), batch=32)
        prog = compile(plan, mg, module_model_loss("mmt-tiny"), optax.adam(1e-3))
        state = prog.init(init_module_graph(mg, inputs, key=jax.random.key(0)))
        state, metrics = prog.step(state, inputs, targets)
    """
    from jgraph.pipeline._runtime import compile as _compile

    return _compile(plan, module_graph, loss_fn, optimizer, mesh=mesh)
