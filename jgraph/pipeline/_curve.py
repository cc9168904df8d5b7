"""Per-micro-batch efficiency curves, the cost-profile JSON that carries them, and applying one.

An `EfficiencyCurve` gives a block's forward and backward seconds *per sample* at
several per-device micro-batch sizes, either for every node of one kind
(``match="kind"``, e.g. all ``transformer_layer`` nodes) or for one node by name
(``match="node"``). A `CostProfile` groups curves with their provenance (device,
jax version, date, ``source="measured"`` or ``"derived"``) and reads and writes
this JSON layout (``format`` names its version)::

    {"format": "jgraph.pipeline.cost_profile/1", "device": "NVIDIA H200",
     "source": "measured", "jax_version": "0.11.2", "date": "2026-12-07", "note": "...",
     "curves": [{"match": "kind", "key": "transformer_layer", "ref_flops": 1.37e10,
                 "block": "seq 256, hidden 1024, 16 heads, FFN 4096, float32",
                 "micro_batches": [1, 2, 4], "fwd_s_per_sample": [...],
                 "bwd_s_per_sample": [...]}]}

`apply_profile` writes each matching node's ``measured`` rows (seconds per call),
which `CostModel` uses in place of the roofline. Between and beyond the points:

* between two profiled sizes the per-sample time is interpolated log-log (a power
  law per segment, exact at the points). `apply_profile` writes a row at every
  point and every power of two between them; the cost model interpolates the
  per-call time linearly between rows, so the power-of-two micro-batches the
  planners use follow the log-log curve exactly;
* below the smallest size the per-call time is held (launch-bound: the per-sample
  time grows as 1/b); above the largest the per-sample time is held (the device
  is saturated). These are `CostModel`'s rules for any ``measured`` rows.

Sizes: with ``scale="flops"`` (the default) a kind curve is scaled to each node
by ``node.flops / curve.ref_flops`` at the same micro-batch, i.e. every node of
the kind is taken to run at the profiled block's efficiency per FLOP at that
micro-batch. That is first order: a smaller layer is less efficient at a given
micro-batch than a larger one, so give sizes that differ much their own curves
(``match="node"``, or `profile_module_graph`). A curve without ``ref_flops``
(0), or a node without FLOPs, is applied unscaled.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from jgraph.core import ConfigError, atomic_write_text, check_choice, check_number
from jgraph.pipeline._graph import ModelGraph, Node

__all__ = [
    "PROFILE_FORMAT",
    "CostProfile",
    "CurveMatch",
    "CurveScale",
    "EfficiencyCurve",
    "ProfileSource",
    "apply_profile",
]

log = logging.getLogger(__name__)

PROFILE_FORMAT = "jgraph.pipeline.cost_profile/1"

CurveMatch = Literal["kind", "node"]
ProfileSource = Literal["measured", "derived"]
CurveScale = Literal["flops", "none"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficiencyCurve:
    """Forward and backward seconds per sample of one block vs per-device micro-batch.

    Attributes:
        match: ``"kind"`` (every node whose ``kind`` is ``key``) or ``"node"``
            (the node named ``key``; wins over a kind curve).
        key: the node kind or node name.
        micro_batches: profiled per-device micro-batch sizes, strictly increasing.
        fwd_s_per_sample: forward seconds per sample at each size (>= 0).
        bwd_s_per_sample: backward seconds per sample at each size (>= 0).
        ref_flops: forward FLOPs per sample of the profiled block (``Node.flops``
            of the same block), used to scale the curve to other sizes; 0 applies
            it unscaled.
        block: what was profiled (shapes, dtype), for people.

    Example:
        >>> c = EfficiencyCurve(match="kind", key="ff", micro_batches=(1, 4),
        ...     fwd_s_per_sample=(8e-6, 2e-6), bwd_s_per_sample=(16e-6, 4e-6))
        >>> [round(t * 1e6, 3) for t in c.per_sample(2)]  # log-log: the geometric mean
        [4.0, 8.0]
    """

    match: CurveMatch
    key: str
    micro_batches: tuple[int, ...]
    fwd_s_per_sample: tuple[float, ...]
    bwd_s_per_sample: tuple[float, ...]
    ref_flops: float = 0.0
    block: str = ""

    def __post_init__(self) -> None:
        where = f"EfficiencyCurve({self.key!r})"
        check_choice(f"{where}.match", self.match, get_args(CurveMatch))
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError(
                f"{where}.key", self.key, "must be a non-empty string", "name a node kind or node"
            )
        bs = self.micro_batches
        if (
            not isinstance(bs, tuple)
            or not bs
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bs)
            or any(a >= b for a, b in itertools.pairwise(bs))
        ):
            raise ConfigError(
                f"{where}.micro_batches",
                bs,
                "must be a non-empty tuple of strictly increasing ints >= 1",
                "pass e.g. (1, 2, 4, 8)",
            )
        for field in ("fwd_s_per_sample", "bwd_s_per_sample"):
            ts = getattr(self, field)
            if not isinstance(ts, tuple) or len(ts) != len(bs):
                raise ConfigError(
                    f"{where}.{field}",
                    ts,
                    f"must be a tuple with one time per micro-batch ({len(bs)})",
                    "give one seconds-per-sample value for each micro-batch",
                )
            for i, t in enumerate(ts):
                check_number(f"{where}.{field}[{i}]", t, minimum=0)
        check_number(f"{where}.ref_flops", self.ref_flops, minimum=0)
        if not isinstance(self.block, str):
            raise ConfigError(f"{where}.block", self.block, "must be a string", "describe it")

    def per_sample(self, micro_batch: int) -> tuple[float, float]:
        """(forward, backward) seconds per sample at ``micro_batch`` (see the module doc)."""
        bs = self.micro_batches
        if micro_batch <= bs[0]:
            # Per-call time held below the smallest profiled size.
            return (
                self.fwd_s_per_sample[0] * bs[0] / micro_batch,
                self.bwd_s_per_sample[0] * bs[0] / micro_batch,
            )
        if micro_batch >= bs[-1]:
            return self.fwd_s_per_sample[-1], self.bwd_s_per_sample[-1]
        hi = next(i for i, b in enumerate(bs) if b >= micro_batch)
        lo = hi - 1
        w = math.log(micro_batch / bs[lo]) / math.log(bs[hi] / bs[lo])
        f, g = self.fwd_s_per_sample, self.bwd_s_per_sample
        return _loglog(f[lo], f[hi], w), _loglog(g[lo], g[hi], w)

    def rows(self, factor: float = 1.0) -> tuple[tuple[int, float, float], ...]:
        """``Node.measured`` rows (seconds per call) at the points and the powers of two between."""
        lo, hi = self.micro_batches[0], self.micro_batches[-1]
        sizes = set(self.micro_batches) | {
            1 << k for k in range(hi.bit_length()) if lo < (1 << k) < hi
        }
        out = []
        for b in sorted(sizes):
            f, g = self.per_sample(b)
            out.append((b, f * b * factor, g * b * factor))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for field in ("micro_batches", "fwd_s_per_sample", "bwd_s_per_sample"):
            d[field] = list(d[field])
        return d

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "EfficiencyCurve") -> EfficiencyCurve:
        """A curve from `to_dict`'s layout; unknown or missing fields are named."""
        if not isinstance(d, Mapping):
            raise ConfigError(where, d, "is not a JSON object", "write each curve as {...}")
        _check_keys(where, d, cls)
        d = dict(d)
        for field in ("micro_batches", "fwd_s_per_sample", "bwd_s_per_sample"):
            if not isinstance(d[field], list | tuple):
                raise ConfigError(
                    f"{where}.{field}", d[field], "must be a list", "write e.g. [1, 2, 4]"
                )
            d[field] = tuple(d[field])
        try:
            return cls(**d)
        except ConfigError as exc:
            # Name the curve's position in the file as well as its key:
            # "CostProfile.curves[0]('ff').micro_batches".
            field = exc.field.replace("EfficiencyCurve", where, 1)
            raise ConfigError(field, exc.value, exc.problem, exc.fix) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CostProfile:
    """Efficiency curves measured (or derived) on one device, with their provenance.

    Attributes:
        device: the card (``jax.devices()[0].device_kind``) or, for a derived
            profile, what it was derived from.
        source: ``"measured"`` (timed by jgraph) or ``"derived"`` (computed from
            other numbers; ``note`` must say from which).
        jax_version: jax version of the measurement (free text for derived ones).
        date: ISO date (``YYYY-MM-DD``) of the measurement.
        curves: the curves; at most one per (match, key).
        note: how the numbers were obtained.

    Example:
        >>> p = CostProfile(device="cpu", source="measured", jax_version="0.10.2",
        ...     date="2026-12-07", curves=(EfficiencyCurve(match="kind", key="ff",
        ...     micro_batches=(1,), fwd_s_per_sample=(1e-5,), bwd_s_per_sample=(2e-5,)),))
        >>> CostProfile.from_json(p.to_json()) == p
        True
    """

    device: str
    source: ProfileSource
    jax_version: str
    date: str
    curves: tuple[EfficiencyCurve, ...]
    note: str = ""

    def __post_init__(self) -> None:
        for field in ("device", "jax_version", "date"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"CostProfile.{field}", value, "must be a non-empty string", "fill it in"
                )
        check_choice("CostProfile.source", self.source, get_args(ProfileSource))
        try:
            datetime.date.fromisoformat(self.date)
        except ValueError:
            raise ConfigError(
                "CostProfile.date", self.date, "is not an ISO date", "write e.g. 2026-12-07"
            ) from None
        if not isinstance(self.note, str):
            raise ConfigError("CostProfile.note", self.note, "must be a string", "describe it")
        if self.source == "derived" and not self.note:
            raise ConfigError(
                "CostProfile.note", "", "a derived profile must say what it was derived from",
                "quote the measurements and the rule in note",
            )  # fmt: skip
        if (
            not isinstance(self.curves, tuple)
            or not self.curves
            or not all(isinstance(c, EfficiencyCurve) for c in self.curves)
        ):
            raise ConfigError(
                "CostProfile.curves",
                self.curves,
                "must be a non-empty tuple of EfficiencyCurve",
                "add at least one curve",
            )
        seen: set[tuple[str, str]] = set()
        for i, c in enumerate(self.curves):
            if (c.match, c.key) in seen:
                raise ConfigError(
                    f"CostProfile.curves[{i}]",
                    f"{c.match}={c.key}",
                    "repeats a (match, key) pair",
                    "keep one curve per node kind or node name",
                )
            seen.add((c.match, c.key))

    @functools.cached_property
    def _by_key(self) -> dict[tuple[str, str], EfficiencyCurve]:
        return {(c.match, c.key): c for c in self.curves}

    def curve_for(self, node: Node) -> EfficiencyCurve | None:
        """The node's curve: by name first, then by kind; None when neither matches."""
        return self._by_key.get(("node", node.name)) or self._by_key.get(("kind", node.kind))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "device": self.device,
            "source": self.source,
            "jax_version": self.jax_version,
            "date": self.date,
            "note": self.note,
            "curves": [c.to_dict() for c in self.curves],
        }

    @classmethod
    def from_dict(cls, d: Any) -> CostProfile:
        """A profile from `to_dict`'s layout; every field checked and named when wrong."""
        if not isinstance(d, Mapping):
            raise ConfigError("CostProfile", d, "is not a JSON object", "write {...}")
        if d.get("format") != PROFILE_FORMAT:
            raise ConfigError(
                "CostProfile.format",
                d.get("format"),
                "is not a jgraph cost profile of a known version",
                f'write "format": "{PROFILE_FORMAT}"',
            )
        d = {k: v for k, v in d.items() if k != "format"}
        _check_keys("CostProfile", d, cls)
        curves = d["curves"]
        if not isinstance(curves, list | tuple):
            raise ConfigError(
                "CostProfile.curves", curves, "must be a list of curves", 'write "curves": [{...}]'
            )
        d["curves"] = tuple(
            EfficiencyCurve.from_dict(c, where=f"CostProfile.curves[{i}]")
            for i, c in enumerate(curves)
        )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CostProfile:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "CostProfile JSON", str(text)[:40], f"is not JSON ({exc})", "fix the file"
            ) from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostProfile:
        """Reads a profile file; a missing or unreadable file is a `ConfigError` too."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                "CostProfile path", str(path), f"cannot be read ({exc})", "pass a profile JSON file"
            ) from None
        return cls.from_json(text)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the JSON atomically (`load` reads it back)."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_graph(
        cls, graph: ModelGraph, *, device: str, jax_version: str, date: str, note: str = ""
    ) -> CostProfile:
        """By-node curves from a graph whose nodes carry ``measured`` rows.

        For saving what `profile_module_graph` timed and applying it again later
        (to the same graph, or to an analytic graph with the same node names).
        """
        curves = tuple(
            EfficiencyCurve(
                match="node",
                key=n.name,
                micro_batches=tuple(int(r[0]) for r in rows),
                fwd_s_per_sample=tuple(r[1] / r[0] for r in rows),
                bwd_s_per_sample=tuple(r[2] / r[0] for r in rows),
                ref_flops=n.flops,
                block=f"node {n.name} ({n.kind}) of {graph.name}",
            )
            for n in graph.nodes
            if n.measured
            for rows in [sorted(n.measured)]
        )
        return cls(
            device=device, source="measured", jax_version=jax_version, date=date,
            curves=curves, note=note,
        )  # fmt: skip


def _loglog(lo: float, hi: float, w: float) -> float:
    """``lo^(1-w) hi^w``; a zero end (a block with no backward) has no logarithm: linear."""
    if lo > 0 and hi > 0:
        return lo ** (1 - w) * hi**w
    return lo + w * (hi - lo)


def _check_keys(where: str, d: Mapping[str, Any], cls: type) -> None:
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(where, unknown, "are not known fields", f"use only {sorted(known)}")
    missing = sorted(required - set(d))
    if missing:
        raise ConfigError(where, missing, "are missing", f"add {', '.join(missing)}")


def apply_profile(
    graph: ModelGraph, profile: CostProfile, *, scale: CurveScale = "flops"
) -> ModelGraph:
    """The graph with each matching node's ``measured`` rows set from ``profile``.

    A node curve (``match="node"``) wins over a kind curve; nodes without a curve
    keep what they had (their own ``measured`` rows, else the roofline).

    Args:
        graph: the costed graph.
        profile: the curves.
        scale: ``"flops"`` scales a curve by ``node.flops / curve.ref_flops``
            (when both are > 0); ``"none"`` applies it as profiled.

    Returns:
        A new `ModelGraph` (the input is not changed).

    Raises:
        ConfigError: a node curve names a node that is not in the graph (kind
            curves that match nothing are fine: one profile serves many models).

    Example:
        >>> from jgraph.pipeline.models import mmt
        >>> curve = EfficiencyCurve(match="kind", key="transformer_layer",
        ...     micro_batches=(1, 64), fwd_s_per_sample=(3e-3, 4e-4), bwd_s_per_sample=(6e-3, 8e-4))
        >>> p = CostProfile(device="example", source="derived", jax_version="-",
        ...     date="2026-12-07", curves=(curve,), note="made-up numbers")
        >>> g = apply_profile(mmt(branches=1, layers=1), p, scale="none")
        >>> g.by_name["b0.layer0"].measured[0], len(g.by_name["b0.layer0"].measured)
        ((1, 0.003, 0.006), 7)
    """
    check_choice("apply_profile.scale", scale, get_args(CurveScale))
    for i, c in enumerate(profile.curves):
        if c.match == "node" and c.key not in graph.by_name:
            raise ConfigError(
                f"CostProfile.curves[{i}].key",
                c.key,
                f"names a node that is not in graph {graph.name!r}",
                "profile this graph's nodes, or drop that curve",
            )
    nodes = []
    matched = 0
    for n in graph.nodes:
        curve = profile.curve_for(n)
        if curve is None:
            nodes.append(n)
            continue
        factor = 1.0
        if scale == "flops" and curve.ref_flops > 0 and n.flops > 0:
            factor = n.flops / curve.ref_flops
        nodes.append(dataclasses.replace(n, measured=curve.rows(factor)))
        matched += 1
    log.info("apply_profile: %d of %d nodes of %s got a curve", matched, len(nodes), graph.name)
    return ModelGraph(name=graph.name, nodes=tuple(nodes))
