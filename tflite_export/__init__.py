"""Export of DGMS-quantized JAX models to .tflite for ARM phones.

Status: not built yet; a later issue builds it on `jgraph.quant`'s hardened
(codebook + index) representation. TensorFlow is only ever imported inside
functions of this package, so `import jgraph` stays light.
"""

__all__: list[str] = []
