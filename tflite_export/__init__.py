"""JAX functions and Flax models (DGMS-hardened ones included) to .tflite for phones.

`export(fn_or_model, example_args, ExportConfig(...))` converts with jax2tf and
TensorFlow's TFLite converter (builtin ops only unless Flex ops are allowed),
runs the result in the LiteRT interpreter against the JAX function, and reports
the op list, the stored weights (distinct values and codes per tensor) and the
sizes (raw, gzip -9, DGMS's packed b-bit size). Modes (`MODES`): ``float``,
``codebook_int8`` (int8 weights that keep a DGMS codebook: at most K codes per
tensor), and the baselines ``dynamic_int8`` and ``full_int8``.

`demo` is the `jgraph demo` part. TensorFlow is imported only inside functions:
``import tflite_export`` is light.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> import tflite_export
    >>> w = np.ones((4, 3), np.float32)
    >>> res = tflite_export.export(lambda x: x @ w, (np.zeros((2, 4), np.float32),))
    >>> res.ops, res.parity.passed
    (('FULLY_CONNECTED',), True)
"""

from tflite_export._codebook import CodebookLayer as CodebookLayer
from tflite_export._codebook import snap_codebooks as snap_codebooks
from tflite_export._config import MODES as MODES
from tflite_export._config import ExportConfig as ExportConfig
from tflite_export._config import Mode as Mode
from tflite_export._convert import UnsupportedOpsError as UnsupportedOpsError
from tflite_export._demo import demo as demo
from tflite_export._export import ExportResult as ExportResult
from tflite_export._export import SizeReport as SizeReport
from tflite_export._export import export as export
from tflite_export._flatbuffer import ModelInfo as ModelInfo
from tflite_export._flatbuffer import TensorInfo as TensorInfo
from tflite_export._flatbuffer import read_model as read_model
from tflite_export._verify import ParityError as ParityError
from tflite_export._verify import ParityReport as ParityReport
from tflite_export._verify import TFLiteRunner as TFLiteRunner

__all__ = [
    "MODES",
    "CodebookLayer",
    "ExportConfig",
    "ExportResult",
    "Mode",
    "ModelInfo",
    "ParityError",
    "ParityReport",
    "SizeReport",
    "TFLiteRunner",
    "TensorInfo",
    "UnsupportedOpsError",
    "demo",
    "export",
    "read_model",
    "snap_codebooks",
]
