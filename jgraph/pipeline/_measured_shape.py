"""A DERIVED efficiency curve: the roofline's scale with the shape of one quoted measurement.

Not measured by jgraph. The only numbers behind it are two points quoted in
BENCHMARKS.md (recorded 2026-11-27, "a helper's check"): one MMT-config
Transformer layer (seq 256, hidden 1024, 16 heads, FFN 4096) took 1151 µs per
sample forward+backward at micro-batch 1 and 143 µs at 64 on one NVIDIA H200.
The V100 roofline of the same layer gives 1462 and 1285 µs: it has the scale of
a V100 but almost none of the measured micro-batch effect (x1.14 against x8.05).

`measured_shape_profile` keeps the roofline's per-sample time at micro-batch 64
(where both the roofline and the measurement are near saturation) and applies
the measured *relative* shape below it:
``t(b) = roofline(64) * (1151 / 143) ** (1 - log(b) / log(64))`` per sample,
i.e. log-log interpolation between the two quoted points (nothing else is
known between them), with the roofline's forward/backward split at 64 kept at
every size. Only ``transformer_layer`` nodes get the curve: the measurement says
nothing about FF layers or embedding bags (whose roofline is already
weight- or launch-bound at small micro-batches).
"""

from __future__ import annotations

import math

from jgraph.pipeline._config import ClusterConfig
from jgraph.pipeline._cost import _roofline
from jgraph.pipeline._curve import CostProfile, EfficiencyCurve
from jgraph.pipeline._models import transformer_layer

__all__ = ["MEASURED_SHAPE_LABEL", "QUOTED_H200_LAYER_S_PER_SAMPLE", "measured_shape_profile"]

# QUOTED, NOT MEASURED BY JGRAPH: (micro-batch, forward+backward seconds per sample) of
# one MMT-config Transformer layer on one NVIDIA H200, as recorded in BENCHMARKS.md.
QUOTED_H200_LAYER_S_PER_SAMPLE: tuple[tuple[int, float], ...] = ((1, 1151e-6), (64, 143e-6))

MEASURED_SHAPE_LABEL = (
    "DERIVED, not measured: roofline per-sample time at micro-batch 64, shaped by one quoted "
    "H200 measurement of a Transformer layer (1151 -> 143 us/sample, micro-batch 1 -> 64), "
    "log-log between; transformer_layer nodes only"
)

_SIZES = (1, 2, 4, 8, 16, 32, 64)


def measured_shape_profile(cluster: ClusterConfig | None = None) -> CostProfile:
    """The derived ``measured-shape`` profile for ``cluster`` (default: the V100 `ClusterConfig`).

    Example:
        >>> p = measured_shape_profile()
        >>> c = p.curves[0]
        >>> p.source, c.key, c.micro_batches[0], c.micro_batches[-1]
        ('derived', 'transformer_layer', 1, 64)
        >>> f1, b1 = c.per_sample(1); f64, b64 = c.per_sample(64)
        >>> round((f1 + b1) / (f64 + b64), 2), round((f64 + b64) * 1e6)  # quoted ratio, roofline us
        (8.05, 1285)
    """
    cluster = cluster if cluster is not None else ClusterConfig()
    ref = transformer_layer("ref", "in")  # the MMT config the measurement used
    (b_lo, t_lo), (b_hi, t_hi) = QUOTED_H200_LAYER_S_PER_SAMPLE
    fwd_hi, bwd_hi = (t / b_hi for t in _roofline(ref, b_hi, cluster))

    def shape(b: int) -> float:
        return (t_lo / t_hi) ** (1 - math.log(b / b_lo) / math.log(b_hi / b_lo))

    curve = EfficiencyCurve(
        match="kind",
        key="transformer_layer",
        micro_batches=_SIZES,
        fwd_s_per_sample=tuple(fwd_hi * shape(b) for b in _SIZES),
        bwd_s_per_sample=tuple(bwd_hi * shape(b) for b in _SIZES),
        ref_flops=ref.flops,
        block="transformer_layer seq 256, hidden 1024, 16 heads, FFN 4096 (MMT config), float32",
    )
    note = (
        f"{MEASURED_SHAPE_LABEL}. Roofline of {cluster.name}: "
        f"{(fwd_hi + bwd_hi) * 1e6:.0f} us/sample at micro-batch {b_hi}; quoted H200 points "
        f"{t_lo * 1e6:.0f} us (b={b_lo}) and {t_hi * 1e6:.0f} us (b={b_hi}) per sample, "
        "forward+backward, recorded in BENCHMARKS.md on 2026-11-27."
    )
    return CostProfile(
        device=f"{cluster.name} roofline x quoted H200 shape",
        source="derived",
        jax_version="n/a (derived, not measured)",
        date="2026-11-27",
        curves=(curve,),
        note=note,
    )
