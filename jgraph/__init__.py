"""jgraph: four systems-ML papers as one JAX library.

Subpackages (import them explicitly; nothing heavy happens at ``import jgraph``):

* `jgraph.pipeline`: GraphPipe graph pipeline parallelism.
* `jgraph.superopt`: Mirage μGraph superoptimization.
* `jgraph.coserve`: FlexLLM co-serving of inference and LoRA finetuning.
* `jgraph.quant`: DGMS Gaussian-mixture weight sharing (export: `tflite_export`).
* `jgraph.core`: what two or more of them share; `jgraph.testing`: test helpers.
"""

from jgraph._version import __version__ as __version__

__all__ = ["__version__"]
