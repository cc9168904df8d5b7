"""Running a .tflite model in the LiteRT interpreter and comparing it with JAX."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ParityError",
    "ParityReport",
    "TFLiteRunner",
    "compare",
    "merge_reports",
]


class ParityError(AssertionError):
    """A float export's outputs differ from the JAX function's beyond the tolerance."""


class TFLiteRunner:
    """Calls one signature of a .tflite model with numpy inputs, in LiteRT.

    Args:
        data: the .tflite bytes.
        signature: the signature to run.
        input_names: the order positional inputs are given in (default: the
            signature's stored order, which SavedModel sorts by name;
            `ExportResult.runner` passes the exported argument order).
        output_names: the order outputs are returned in (same default).
        num_threads: interpreter threads (1 gives repeatable timings).
        delegate: ``xnnpack`` (LiteRT's default CPU delegate) or ``none``
            (the builtin reference kernels only).

    Example:
        >>> import numpy as np, tflite_export
        >>> res = tflite_export.export(lambda a, b: a * b, (np.ones(2, np.float32),) * 2)
        >>> res.runner()([np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)])
        [array([3., 8.], dtype=float32)]
    """

    def __init__(
        self,
        data: bytes,
        signature: str,
        *,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        num_threads: int = 1,
        delegate: str = "xnnpack",
    ):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from tflite_export._flatbuffer import read_signatures

        if delegate not in ("xnnpack", "none"):
            raise ValueError(f"delegate must be 'xnnpack' or 'none', not {delegate!r}")
        resolver = (
            OpResolverType.AUTO
            if delegate == "xnnpack"
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        self.interpreter = Interpreter(
            model_content=bytes(data),
            num_threads=num_threads,
            experimental_op_resolver_type=resolver,
        )
        self.runner = self.interpreter.get_signature_runner(signature)
        stored_in, stored_out = read_signatures(data)[signature]
        self.input_names = tuple(input_names) if input_names is not None else stored_in
        self.output_names = tuple(output_names) if output_names is not None else stored_out
        if sorted(self.input_names) != sorted(stored_in):
            raise ValueError(f"input_names {self.input_names} are not the model's {stored_in}")
        if sorted(self.output_names) != sorted(stored_out):
            raise ValueError(f"output_names {self.output_names} are not the model's {stored_out}")

    def __call__(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Runs the model: inputs by name, or positionally in ``input_names`` order."""
        if isinstance(inputs, Mapping):
            feed = dict(inputs)
        else:
            if len(inputs) != len(self.input_names):
                raise ValueError(f"expected {len(self.input_names)} inputs {self.input_names}")
            feed = dict(zip(self.input_names, inputs, strict=True))
        out = self.runner(**feed)
        return [np.asarray(out[n]) for n in self.output_names]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParityReport:
    """How the .tflite model's outputs compare with the JAX function's.

    Attributes:
        kind: ``allclose`` (float export: every output within ``rtol``/``atol``)
            or ``quantized`` (int8 modes: errors and agreement reported).
        samples: input sets compared.
        max_abs_error: largest ``|tflite - jax|`` over all outputs.
        max_rel_error: largest ``|tflite - jax| / |jax|`` where ``|jax| > atol``
            (large for int8 modes wherever an output is near zero; judge those
            by ``max_abs_error`` and the agreement).
        rtol: the relative tolerance (``allclose``).
        atol: the absolute tolerance (``allclose``).
        passed: ``allclose``: all within tolerance; ``quantized``: always True
            (judge the errors and the agreement).
        top1_agreement: share of rows whose argmax over the last axis of the
            first output agrees (when that output has a class axis); over the
            ``data`` when given, else over the random inputs.
        tflite_accuracy: top-1 accuracy of the .tflite model (labels given).
        jax_accuracy: top-1 accuracy of the JAX function (labels given).
    """

    kind: str
    samples: int
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    passed: bool
    top1_agreement: float | None = None
    tflite_accuracy: float | None = None
    jax_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(
    got_batches: Sequence[Sequence[np.ndarray]],
    reference: Callable[..., list[np.ndarray]],
    batches: Sequence[Sequence[np.ndarray]],
    *,
    kind: str,
    rtol: float,
    atol: float,
    labels: Sequence[np.ndarray] | None = None,
) -> ParityReport:
    """Runs the reference on every input set and reports its differences from the .tflite's.

    Args:
        got_batches: the .tflite model's outputs for each input set (run once,
            however many references it is compared with).
        reference: the JAX function (flat inputs -> flat list of outputs).
        batches: input sets, each matching the signature's inputs.
        kind: ``allclose`` or ``quantized``.
        rtol: relative tolerance.
        atol: absolute tolerance.
        labels: optional int labels per batch (top-1 accuracy).
    """
    max_abs = max_rel = 0.0
    within = True
    agree = rows = correct_t = correct_j = 0
    for b, (got, batch) in enumerate(zip(got_batches, batches, strict=True)):
        want = [np.asarray(o, np.float32) for o in reference(*batch)]
        for g, w in zip(got, want, strict=True):
            g32 = g.astype(np.float32)
            diff = np.abs(g32 - w)
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            big = np.abs(w) > atol
            if big.any():
                max_rel = max(max_rel, float((diff[big] / np.abs(w[big])).max()))
            within = within and bool(np.all(diff <= atol + rtol * np.abs(w)))
        first_t, first_j = got[0], want[0]
        if first_j.ndim >= 1 and first_j.shape[-1] > 1:
            pt = np.argmax(first_t, -1).reshape(-1)
            pj = np.argmax(first_j, -1).reshape(-1)
            agree += int(np.sum(pt == pj))
            rows += pt.size
            if labels is not None:
                y = np.asarray(labels[b]).reshape(-1)
                correct_t += int(np.sum(pt == y))
                correct_j += int(np.sum(pj == y))
    return ParityReport(
        kind=kind,
        samples=len(batches),
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        rtol=rtol,
        atol=atol,
        passed=within if kind == "allclose" else True,
        top1_agreement=agree / rows if rows else None,
        tflite_accuracy=correct_t / rows if rows and labels is not None else None,
        jax_accuracy=correct_j / rows if rows and labels is not None else None,
    )


def merge_reports(reports: Sequence[ParityReport]) -> ParityReport:
    """One report over several comparisons: worst errors, all must pass.

    Agreement and accuracies come from the last report that has them (the data
    comparison, when there is one).
    """
    last = reports[-1]
    with_rows = [r for r in reports if r.top1_agreement is not None]
    pick = with_rows[-1] if with_rows else last
    return ParityReport(
        kind=last.kind,
        samples=sum(r.samples for r in reports),
        max_abs_error=max(r.max_abs_error for r in reports),
        max_rel_error=max(r.max_rel_error for r in reports),
        rtol=last.rtol,
        atol=last.atol,
        passed=all(r.passed for r in reports),
        top1_agreement=pick.top1_agreement,
        tflite_accuracy=pick.tflite_accuracy,
        jax_accuracy=pick.jax_accuracy,
    )
