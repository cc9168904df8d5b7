"""Reading (and rewriting) a .tflite flatbuffer: op list, signatures, stored weights.

Uses the schema classes that ship with ``ai-edge-litert`` (``schema_py_generated``),
so no TensorFlow is needed to inspect a model: what a phone would load is read
byte for byte, including each weight tensor's stored type, its quantization
scales and how many distinct values it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "ModelInfo",
    "TensorInfo",
    "load_model_t",
    "pack_model_t",
    "read_model",
    "read_signatures",
]

_NUMPY = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "INT32": np.int32,
    "INT64": np.int64,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _names(enum: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One constant tensor stored in the model (a weight, bias or shape constant).

    Attributes:
        name: the tensor's name (the converter joins the JAX name stack of
            what was folded into it with ``;``).
        shape: its shape.
        dtype: stored type (``FLOAT32``, ``INT8``, ...).
        nbytes: bytes of its buffer.
        distinct: number of distinct stored values.
        scales: per-tensor (1) or per-channel quantization scales; empty when
            not quantized.
        quantized_dimension: the channel axis of per-channel scales.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    distinct: int
    scales: tuple[float, ...] = ()
    quantized_dimension: int = 0

    @property
    def is_weight(self) -> bool:
        """A float or int8 tensor of rank >= 2 (a kernel, not a bias or shape)."""
        return len(self.shape) >= 2 and self.dtype in ("FLOAT32", "FLOAT16", "INT8")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = len(self.scales)
        return d


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What a .tflite file contains.

    Attributes:
        ops: operator names in execution order (builtin names such as
            ``CONV_2D``; ``FLEX:<TFOp>`` or ``CUSTOM:<code>`` otherwise).
        signatures: signature name -> (input names, output names), as stored
            (SavedModel sorts them by name; `ExportResult` keeps the argument order).
        tensors: every constant tensor with a buffer.
    """

    ops: tuple[str, ...]
    signatures: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    tensors: tuple[TensorInfo, ...]

    @property
    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op] = counts.get(op, 0) + 1
        return counts

    @property
    def non_builtin_ops(self) -> tuple[str, ...]:
        return tuple(sorted({op for op in self.ops if ":" in op}))

    @property
    def weights(self) -> tuple[TensorInfo, ...]:
        return tuple(t for t in self.tensors if t.is_weight)


def load_model_t(data: bytes) -> Any:
    """The flatbuffer as the schema's mutable object tree (``ModelT``)."""
    return _schema().ModelT.InitFromPackedBuf(bytearray(data), 0)


def pack_model_t(model: Any) -> bytes:
    """Serializes a ``ModelT`` back to .tflite bytes (file identifier ``TFL3``)."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _decode(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def _op_name(code: Any, builtin: dict[int, str]) -> str:
    value = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = builtin.get(value, f"BUILTIN_{value}")
    if name == "CUSTOM":
        custom = _decode(code.customCode)
        return f"FLEX:{custom[4:]}" if custom.startswith("Flex") else f"CUSTOM:{custom}"
    return name


def tensor_array(model: Any, tensor: Any) -> np.ndarray | None:
    """A constant tensor's stored values (None if it has no buffer or an unknown type)."""
    buf = model.buffers[tensor.buffer]
    types = _names(_schema().TensorType)
    dtype = _NUMPY.get(types.get(tensor.type, ""))
    if buf is None or buf.data is None or len(buf.data) == 0 or dtype is None:
        return None
    shape = tuple(int(s) for s in tensor.shape) if tensor.shape is not None else ()
    return np.frombuffer(bytes(np.asarray(buf.data, np.uint8)), dtype).reshape(shape)


def read_model(data: bytes) -> ModelInfo:
    """Reads the op list, signatures and constant tensors of a .tflite model.

    Args:
        data: the .tflite bytes.

    Returns:
        A `ModelInfo`.

    Example:
        >>> import numpy as np, tflite_export
        >>> w = np.arange(6, dtype=np.float32).reshape(3, 2)
        >>> res = tflite_export.export(lambda x: x @ w, (np.ones((1, 3), np.float32),))
        >>> info = read_model(res.data)
        >>> info.ops, info.signatures
        (('FULLY_CONNECTED',), {'serving_default': (('input',), ('output',))})
        >>> [(t.dtype, t.shape, t.distinct) for t in info.weights]
        [('FLOAT32', (2, 3), 6)]
    """
    schema = _schema()
    model = load_model_t(data)
    builtin = _names(schema.BuiltinOperator)
    types = _names(schema.TensorType)
    ops: list[str] = []
    tensors: list[TensorInfo] = []
    for sg in model.subgraphs or []:
        ops += [_op_name(model.operatorCodes[op.opcodeIndex], builtin) for op in sg.operators or []]
        for t in sg.tensors or []:
            arr = tensor_array(model, t)
            if arr is None:
                continue
            q = t.quantization
            scales = (
                tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else ()
            )
            tensors.append(
                TensorInfo(
                    name=_decode(t.name),
                    shape=tuple(int(s) for s in arr.shape),
                    dtype=types.get(t.type, str(t.type)),
                    nbytes=int(arr.nbytes),
                    distinct=int(np.unique(arr).size),
                    scales=scales,
                    quantized_dimension=int(q.quantizedDimension) if q is not None else 0,
                )
            )
    return ModelInfo(ops=tuple(ops), signatures=_signatures(model), tensors=tuple(tensors))


def _signatures(model: Any) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {
        _decode(s.signatureKey): (
            tuple(_decode(i.name) for i in s.inputs or []),
            tuple(_decode(o.name) for o in s.outputs or []),
        )
        for s in model.signatureDefs or []
    }


def read_signatures(data: bytes) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Signature name -> (input names, output names), in argument order."""
    return _signatures(load_model_t(data))
