"""`ExportConfig`: how a JAX function becomes a .tflite file, and how it is checked."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from jgraph.core import ConfigError, check_choice, check_int, check_number

__all__ = ["MODES", "ExportConfig", "Mode", "VerifyMode"]

Mode = Literal["float", "codebook_int8", "dynamic_int8", "full_int8"]
MODES: tuple[str, ...] = ("float", "codebook_int8", "dynamic_int8", "full_int8")
"""The export modes:

* ``float``: float32 weights and activations. A DGMS-hardened kernel keeps its
  K shared values (per output channel once BatchNorm is folded into it).
* ``codebook_int8``: DGMS only. Each hardened layer's codebook is snapped to a
  symmetric int8 grid (`snap_codebooks`) and the stored int8 weights are written
  as those codes, so a tensor holds at most K distinct int8 values (per-channel
  scales absorb folded BatchNorm); activations are quantized on the fly
  (LiteRT's dynamic-range kernels).
* ``dynamic_int8``: the converter's standard dynamic-range quantization
  (per-channel int8 weights): the baseline; it breaks a learned codebook.
* ``full_int8``: full-integer post-training quantization calibrated on a
  representative dataset (int8 weights and activations, float32 inputs and
  outputs): the other baseline.
"""

VerifyMode = Literal["raise", "report", "skip"]

# TensorFlow signature argument names: what SavedModel accepts as input/output keys.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _check_names(field: str, names: tuple[str, ...] | None) -> None:
    if names is None:
        return
    if not isinstance(names, tuple) or not names:
        raise ConfigError(field, names, "must be a non-empty tuple of names", "e.g. ('images',)")
    for n in names:
        if not isinstance(n, str) or not _NAME.match(n):
            raise ConfigError(
                field,
                n,
                "is not a valid signature name",
                "use letters, digits and '_', starting with a letter",
            )
    if len(set(names)) != len(names):
        raise ConfigError(field, names, "has duplicate names", "give every tensor its own name")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """How `export` converts and verifies.

    Attributes:
        mode: one of `MODES`.
        signature: the name of the model's one signature (LiteRT's
            ``get_signature_runner(signature)``).
        input_names: one per input leaf, in `jax.tree.flatten` order; default
            ``input_0, input_1, ...`` (or ``input`` for a single input).
        output_names: one per output leaf; default ``output_0, ...`` (or
            ``output`` for a single output).
        allow_flex_ops: allow TensorFlow (Flex) ops where no builtin op exists.
            Off by default: such a model needs the Flex delegate on the phone,
            so an unsupported op fails the export with its name and location.
        verify: ``raise`` (default) runs the .tflite in the LiteRT interpreter
            and raises `ParityError` when a float export misses the tolerance;
            ``report`` only reports; ``skip`` does not run it.
        rtol: relative tolerance of the float parity check (the
            ``cross_runtime`` float32 row of `jgraph.testing.TOLERANCES`).
        atol: absolute tolerance of the float parity check.
        parity_samples: fresh random input sets the parity check draws.
        seed: seed of those random inputs.
        calibration_batches: at most this many batches of the representative
            data are used to calibrate ``full_int8``.
    """

    mode: Mode = "float"
    signature: str = "serving_default"
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    allow_flex_ops: bool = False
    verify: VerifyMode = "raise"
    rtol: float = 1e-5
    atol: float = 1e-5
    parity_samples: int = 4
    seed: int = 0
    calibration_batches: int = 100

    def __post_init__(self) -> None:
        check_choice("ExportConfig.mode", self.mode, MODES)
        check_choice("ExportConfig.verify", self.verify, ("raise", "report", "skip"))
        if not isinstance(self.signature, str) or not _NAME.match(self.signature):
            raise ConfigError(
                "ExportConfig.signature",
                self.signature,
                "is not a valid signature name",
                "use letters, digits and '_', starting with a letter",
            )
        _check_names("ExportConfig.input_names", self.input_names)
        _check_names("ExportConfig.output_names", self.output_names)
        check_number("ExportConfig.rtol", self.rtol, minimum=0.0)
        check_number("ExportConfig.atol", self.atol, minimum=0.0)
        check_int("ExportConfig.parity_samples", self.parity_samples, minimum=1)
        check_int("ExportConfig.seed", self.seed, minimum=0)
        check_int("ExportConfig.calibration_batches", self.calibration_batches, minimum=1)
