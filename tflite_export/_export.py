"""`export`: a JAX function or Flax model to a verified .tflite file with reports."""

from __future__ import annotations

import dataclasses
import gzip
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jgraph.core import ConfigError, atomic_write_bytes
from jgraph.quant import Hardened, compression_report
from tflite_export._codebook import CodebookLayer, describe_float, preserve_codebooks
from tflite_export._config import ExportConfig
from tflite_export._convert import convert
from tflite_export._flatbuffer import ModelInfo, read_model
from tflite_export._inputs import as_batches, check_example_args, check_outputs, default_names
from tflite_export._model import as_function
from tflite_export._verify import ParityError, ParityReport, TFLiteRunner, compare, merge_reports

__all__ = ["ExportResult", "SizeReport", "export"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizeReport:
    """Model sizes, in bytes.

    Attributes:
        raw: the .tflite file.
        gzip: the file after ``gzip -9`` (what a download or an app bundle costs).
        packed: DGMS's theoretical packed size (b-bit indices + codebooks +
            float32 for everything else; `jgraph.quant.compression_report`),
            when codebooks were given.
        fp32_params: float32 bytes of the hardened model's variables (the
            dense baseline `compression_report` compares with), when given.
    """

    raw: int
    gzip: int
    packed: int | None = None
    fp32_params: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What `export` produced and measured.

    Attributes:
        data: the .tflite bytes.
        path: where they were written (None if not written).
        config: the `ExportConfig` used.
        input_names: the signature's inputs, in argument order.
        output_names: the signature's outputs, in output order.
        model: the file's ops, signatures and stored tensors (`ModelInfo`).
        size: a `SizeReport`.
        parity: a `ParityReport` against the exported function (None with
            ``verify="skip"``).
        trained_parity: ``codebook_int8`` only: the same against the model
            with the trained (unsnapped) codebooks, the hard-quantized model
            the user trained.
        codebooks: one `CodebookLayer` per DGMS layer (when codebooks were given).
    """

    data: bytes = dataclasses.field(repr=False)
    path: Path | None
    config: ExportConfig
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    model: ModelInfo = dataclasses.field(repr=False)
    size: SizeReport
    parity: ParityReport | None
    trained_parity: ParityReport | None = None
    codebooks: tuple[CodebookLayer, ...] = ()

    def runner(self, *, num_threads: int = 1) -> TFLiteRunner:
        """A LiteRT runner taking and returning tensors in the exported order."""
        return TFLiteRunner(
            self.data,
            self.config.signature,
            input_names=self.input_names,
            output_names=self.output_names,
            num_threads=num_threads,
        )

    @property
    def ops(self) -> tuple[str, ...]:
        """Operator names in execution order."""
        return self.model.ops

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no bytes)."""
        return {
            "path": str(self.path) if self.path else None,
            "mode": self.config.mode,
            "signature": self.config.signature,
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "op_counts": self.model.op_counts,
            "size": self.size.as_dict(),
            "parity": self.parity.as_dict() if self.parity else None,
            "trained_parity": self.trained_parity.as_dict() if self.trained_parity else None,
            "codebooks": [dataclasses.asdict(c) for c in self.codebooks],
            "weights": [t.as_dict() for t in self.model.weights],
        }


def _random_inputs(specs: list[jax.ShapeDtypeStruct], rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out.append(rng.standard_normal(s.shape).astype(dt))
        elif dt.kind == "b":
            out.append(rng.random(s.shape) < 0.5)
        else:
            # Small non-negative integers: valid token ids / indices for any embedding.
            out.append(rng.integers(0, 2, s.shape).astype(dt))
    return out


def export(
    fn_or_model: Any,
    example_args: tuple[Any, ...],
    config: ExportConfig | None = None,
    *,
    variables: Mapping[str, Any] | None = None,
    hardened: Hardened | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    representative_data: Any = None,
    data: Any = None,
    labels: Any = None,
    path: str | Path | None = None,
) -> ExportResult:
    """Exports a JAX function, a Linen module or an NNX model to .tflite, and checks it.

    Args:
        fn_or_model: a JAX function of ``example_args`` (closing over its
            weights), a ``flax.linen.Module`` (applied with ``variables``) or an
            ``nnx.Module`` (exported in eval mode).
        example_args: the positional arguments, as arrays or
            ``jax.ShapeDtypeStruct`` with the exact (fixed) shapes to export.
        config: an `ExportConfig` (mode, names, verification).
        variables: a Linen module's variables.
        hardened: DGMS codebooks from `jgraph.quant.harden` / `harden_nnx`. With
            a Linen module they also supply the variables (unless given); with
            ``codebook_int8`` they are snapped to int8 first. Needed for
            ``codebook_int8``; with other modes they add the codebook report.
        apply_kwargs: keyword arguments for the call (``{"train": False}``).
        representative_data: ``full_int8`` calibration inputs: one array per
            input (a bare array for one input), samples first.
        data: inputs for the int8 modes' agreement check, shaped like
            ``representative_data`` (default: random inputs).
        labels: int labels of ``data`` (adds top-1 accuracy of both models).
        path: write the .tflite here (atomically).

    Returns:
        An `ExportResult`.

    Raises:
        ConfigError: bad arguments (named, with a fix), before any tracing
            or conversion.
        UnsupportedOpsError: an op has no TFLite builtin (listing each op and
            where it came from).
        ParityError: a float export misses the tolerance (``verify="raise"``).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> w = np.ones((4, 2), np.float32)
        >>> res = export(lambda x: jnp.tanh(x @ w), (np.zeros((1, 4), np.float32),))
        >>> res.ops, res.parity.passed
        (('FULLY_CONNECTED', 'TANH'), True)
    """
    config = ExportConfig() if config is None else config
    if not isinstance(config, ExportConfig):
        raise ConfigError(
            "config",
            type(config).__name__,
            "is not an ExportConfig",
            "pass tflite_export.ExportConfig(...)",
        )
    if config.mode == "codebook_int8" and hardened is None:
        raise ConfigError(
            "hardened",
            None,
            "is required for mode='codebook_int8' (it needs the DGMS codebooks)",
            "pass hardened=jgraph.quant.harden(variables) (or harden_nnx), or use "
            "mode='dynamic_int8' for a model without codebooks",
        )
    if hardened is not None and not isinstance(hardened, Hardened):
        raise ConfigError(
            "hardened",
            type(hardened).__name__,
            "is not a jgraph.quant.Hardened",
            "pass the result of jgraph.quant.harden / harden_nnx",
        )
    in_paths, specs, in_tree = check_example_args(example_args)
    fn, book = as_function(
        fn_or_model,
        variables=variables,
        hardened=hardened,
        snap=config.mode == "codebook_int8",
        apply_kwargs=apply_kwargs,
    )
    out_paths, _ = check_outputs(fn, jax.tree.unflatten(in_tree, specs))
    in_names = default_names(config.input_names, in_paths, "input", "ExportConfig.input_names")
    out_names = default_names(config.output_names, out_paths, "output", "ExportConfig.output_names")
    calibration = None
    if config.mode == "full_int8":
        if representative_data is None:
            raise ConfigError(
                "representative_data",
                None,
                "is required for mode='full_int8' (activation ranges are calibrated on it)",
                "pass a few hundred real inputs, samples first",
            )
        calibration = as_batches(
            representative_data, specs, "representative_data", config.calibration_batches
        )
    check_batches = as_batches(data, specs, "data") if data is not None else None
    label_batches = None
    if labels is not None:
        if check_batches is None:
            raise ConfigError(
                "labels", "given", "needs data=", "pass the inputs the labels belong to"
            )
        y = np.asarray(labels).reshape(-1)
        b = len(check_batches[0][0])
        if y.size < b * len(check_batches):
            raise ConfigError(
                "labels", y.size, "has fewer labels than data samples", "pass one label per sample"
            )
        label_batches = [y[k * b : (k + 1) * b] for k in range(len(check_batches))]

    flat_fn = _flat(fn, in_tree)
    float_bytes = None
    # The float model is where codebook layers are found (exact values), so any export
    # with codebooks (codebook_int8 always has them) converts it too.
    if config.mode == "float" or book is not None:
        float_bytes = convert(
            flat_fn,
            specs,
            in_names,
            out_names,
            mode="float",
            signature=config.signature,
            allow_flex_ops=config.allow_flex_ops,
        )
    if config.mode == "float":
        assert float_bytes is not None
        out_bytes = float_bytes
    else:
        out_bytes = convert(
            flat_fn,
            specs,
            in_names,
            out_names,
            mode=config.mode,
            signature=config.signature,
            allow_flex_ops=config.allow_flex_ops,
            calibration=calibration,
        )
    layers: list[CodebookLayer] = []
    if config.mode == "codebook_int8":
        assert float_bytes is not None
        assert book is not None
        out_bytes, layers = preserve_codebooks(float_bytes, out_bytes, book)
    elif book is not None and float_bytes is not None:
        layers = describe_float(float_bytes, book, None if config.mode == "float" else out_bytes)
    info = read_model(out_bytes)
    report = compression_report(book) if book is not None else None
    size = SizeReport(
        raw=len(out_bytes),
        gzip=len(gzip.compress(out_bytes, compresslevel=9, mtime=0)),
        packed=report.packed_bytes if report is not None else None,
        fp32_params=report.fp32_bytes if report is not None else None,
    )
    parity = trained_parity = None
    if config.verify != "skip":
        if info.non_builtin_ops:
            log.warning("not running the parity check: the model has %s", info.non_builtin_ops)
        else:
            references = {"exported": flat_fn}
            if config.mode == "codebook_int8":
                # What the user trained is the unsnapped hard model: report against it too.
                trained, _ = as_function(
                    fn_or_model,
                    variables=variables,
                    hardened=hardened,
                    snap=False,
                    apply_kwargs=apply_kwargs,
                )
                references["trained"] = _flat(trained, in_tree)
            runner = TFLiteRunner(
                out_bytes, config.signature, input_names=in_names, output_names=out_names
            )
            reports = _verify(runner, references, specs, config, check_batches, label_batches)
            parity, trained_parity = reports["exported"], reports.get("trained")
    written = atomic_write_bytes(path, out_bytes) if path is not None else None
    result = ExportResult(
        data=out_bytes,
        path=written,
        config=config,
        input_names=in_names,
        output_names=out_names,
        model=info,
        size=size,
        parity=parity,
        trained_parity=trained_parity,
        codebooks=tuple(layers),
    )
    return result


def _flat(fn: Any, in_tree: Any) -> Any:
    """``fn`` on flat input leaves, returning its flat output leaves (the signature's order)."""

    def flat_fn(*leaves: Any) -> list[jax.Array]:
        return jax.tree.leaves(fn(*jax.tree.unflatten(in_tree, list(leaves))))

    return flat_fn


def _verify(
    runner: TFLiteRunner,
    references: Mapping[str, Any],
    specs: list[jax.ShapeDtypeStruct],
    config: ExportConfig,
    check_batches: list[list[np.ndarray]] | None,
    label_batches: list[np.ndarray] | None,
) -> dict[str, ParityReport]:
    """Compares the .tflite with each reference on random inputs and on ``data`` if given.

    The .tflite model runs once per input set, whatever the number of references.
    """
    rng = np.random.default_rng(config.seed)
    kind = "allclose" if config.mode == "float" else "quantized"
    sets: list[tuple[list[list[np.ndarray]], list[np.ndarray] | None]] = []
    # A float export is held to the tolerance on fresh random inputs, and on the data too.
    if kind == "allclose" or check_batches is None:
        sets.append(([_random_inputs(specs, rng) for _ in range(config.parity_samples)], None))
    if check_batches is not None:
        sets.append((check_batches, label_batches))
    outputs = [[runner(batch) for batch in batches] for batches, _ in sets]
    reports = {}
    for name, flat_fn in references.items():
        jitted = jax.jit(flat_fn)

        def reference(*xs: np.ndarray, jitted: Any = jitted) -> list[np.ndarray]:
            return [np.asarray(o) for o in jitted(*xs)]

        reports[name] = merge_reports(
            [
                compare(
                    got,
                    reference,
                    batches,
                    kind=kind,
                    rtol=config.rtol,
                    atol=config.atol,
                    labels=labels,
                )
                for got, (batches, labels) in zip(outputs, sets, strict=True)
            ]
        )
    report = reports["exported"]
    if kind == "allclose" and not report.passed and config.verify == "raise":
        raise ParityError(
            f"the .tflite model differs from the JAX function: max abs error "
            f"{report.max_abs_error:.3g}, max rel error {report.max_rel_error:.3g} "
            f"(tolerance rtol={config.rtol:g}, atol={config.atol:g}, {report.samples} input sets)"
        )
    return reports
