"""jax2tf -> SavedModel -> `tf.lite.TFLiteConverter`: the conversion itself.

TensorFlow is imported here, inside functions only, so ``import tflite_export``
stays light. The function is converted with `jax2tf.convert` (native
serialization: one XlaCallModule op holding StableHLO), saved as a SavedModel
with one named signature, and legalized to TFLite builtin ops by the converter.
Converter failures are turned into `UnsupportedOpsError` naming each op the
converter could not express and the user's source line it came from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jgraph.core import ConfigError

__all__ = ["UnsupportedOpsError", "convert"]

log = logging.getLogger(__name__)


class UnsupportedOpsError(ConfigError):
    """The converter could not express some operations with TFLite builtin ops.

    Attributes:
        ops: ``(op, location)`` pairs: the op (a StableHLO or TF op name) and
            the source location the converter attributed it to ("" if none).
    """

    def __init__(self, ops: Sequence[tuple[str, str]], detail: str, *, flex_allowed: bool):
        self.ops = tuple(ops)
        listed = "; ".join(f"{op} (at {loc})" if loc else op for op, loc in self.ops) or "unknown"
        fix = (
            "rewrite that part with operations LiteRT has (see the TFLite builtin op list)"
            if flex_allowed
            else "rewrite that part with operations LiteRT has, or pass "
            "ExportConfig(allow_flex_ops=True) to keep them as TensorFlow (Flex) ops, "
            "which needs the Flex delegate on the device"
        )
        super().__init__("model", listed, "has operations with no TFLite builtin op", fix)
        self.detail = detail


# "path.py:12:5: error: 'vhlo.sort_v1' op is not part of the vhlo support yet." (the
# converter may glue its own message in front of the path, so the path is searched for).
_OP = re.compile(r"error: '(?P<op>[\w.]+)' op")
_ABS_LOC = re.compile(r"(?P<loc>(?:[A-Za-z]:)?[/\\][^\s:\"]+:\d+:\d+): error: '")
_REL_LOC = re.compile(r"(?P<loc>[\w\-/\\]+\.py:\d+:\d+): error: '")
_CUSTOM = re.compile(r"(?:Custom|Flex) ops: (?P<ops>[\w, ]+)")


def _clean(op: str) -> str:
    return re.sub(r"^vhlo\.|_v\d+$", "", op)


def _parse_failure(message: str) -> list[tuple[str, str]]:
    """``(op, "file.py:line:col")`` pairs from a converter error message."""
    found: list[tuple[str, str]] = []
    for line in message.splitlines():
        op = _OP.search(line)
        if not op:
            continue
        loc = _ABS_LOC.search(line) or _REL_LOC.search(line)
        found.append((_clean(op.group("op")), loc.group("loc") if loc else ""))
    for m in _CUSTOM.finditer(message):
        found += [(o.strip(), "") for o in m.group("ops").split(",") if o.strip()]
    # An op reported with a location makes its location-less duplicates redundant.
    located = {name for name, where in found if where}
    unique: list[tuple[str, str]] = []
    for name, where in found:
        if (name, where) not in unique and (where or name not in located):
            unique.append((name, where))
    return unique


@contextlib.contextmanager
def _quiet_tf() -> Iterator[Any]:
    # TF logs C++ INFO/WARNING lines by default; users asked for an export, not those.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    previous = tf.get_logger().level
    tf.get_logger().setLevel(logging.ERROR)
    try:
        yield tf
    finally:
        tf.get_logger().setLevel(previous)


def convert(
    flat_fn: Callable[..., list[jax.Array]],
    specs: Sequence[jax.ShapeDtypeStruct],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    signature: str,
    mode: str,
    allow_flex_ops: bool,
    calibration: Sequence[Sequence[np.ndarray]] | None = None,
) -> bytes:
    """Converts ``flat_fn`` (flat array inputs -> flat list of outputs) to .tflite bytes.

    Args:
        flat_fn: the function; closes over its weights (they become constants).
        specs: input shapes and dtypes (fixed).
        input_names: signature input names, one per spec.
        output_names: signature output names, one per output.
        signature: the signature name.
        mode: ``float`` / ``codebook_int8`` / ``dynamic_int8`` (the last two
            both run the converter's dynamic-range quantization) or ``full_int8``.
        allow_flex_ops: also allow TensorFlow (Flex) ops.
        calibration: for ``full_int8``: input sets (each matching ``specs``).

    Returns:
        The flatbuffer bytes.

    Raises:
        UnsupportedOpsError: ops without a TFLite builtin.
    """
    with _quiet_tf() as tf:
        from jax.experimental import jax2tf

        module = tf.Module()
        module.fn = tf.function(
            jax2tf.convert(lambda *a: tuple(flat_fn(*a)), with_gradient=False), autograph=False
        )
        tf_specs = [
            tf.TensorSpec(s.shape, tf.as_dtype(np.dtype(s.dtype)), name=n)
            for s, n in zip(specs, input_names, strict=True)
        ]

        def serve(*args: Any) -> dict[str, Any]:
            outs = module.fn(*args)
            return dict(zip(output_names, outs, strict=True))

        serving = tf.function(serve, input_signature=tf_specs, autograph=False)
        with tempfile.TemporaryDirectory(prefix="jgraph-tflite-") as tmp:
            tf.saved_model.save(module, tmp, signatures={signature: serving})
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[signature])
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if mode in ("codebook_int8", "dynamic_int8", "full_int8"):
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if mode == "full_int8":
                # `export` checked representative_data at the API boundary.
                if not calibration:
                    raise ValueError("full_int8 conversion needs calibration batches")
                batches = list(calibration)

                def representative() -> Iterator[list[np.ndarray]]:
                    for batch in batches:
                        yield list(batch)

                conv.representative_dataset = representative
                ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if allow_flex_ops:
                ops = [*ops, tf.lite.OpsSet.SELECT_TF_OPS]
            conv.target_spec.supported_ops = ops
            try:
                data = conv.convert()
            except Exception as err:  # the converter raises ConverterError, or others
                message = str(err)
                parsed = _parse_failure(message)
                if not parsed and "ConverterError" not in type(err).__name__:
                    raise
                raise UnsupportedOpsError(parsed, message, flex_allowed=allow_flex_ops) from None
    log.info("converted to %d bytes of .tflite (mode %s)", len(data), mode)
    return bytes(data)
