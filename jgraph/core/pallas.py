"""TEMP stub (replaced by the helper's module)."""
from __future__ import annotations
from typing import Any
import jax

def device_platform(device: Any) -> str:
    if device.platform != "gpu":
        return device.platform
    version = str(getattr(device.client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version or "hip" in version else "cuda"

def triton_params(*, num_warps: int = 4, num_stages: int = 2) -> Any:
    from jax.experimental.pallas import triton as plt
    return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)

def mosaic_gpu_params(*, num_stages: int = 2) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu
    return plgpu.CompilerParams(max_concurrent_steps=num_stages)

def export_for_cuda(fn: Any, *avals: Any) -> Any:
    dc = [jax.export.DisabledSafetyCheck.custom_call(n) for n in ("__gpu$xla.gpu.triton", "mosaic_gpu", "mosaic_gpu_v2")]
    return jax.export.export(fn, platforms=["cuda"], disabled_checks=dc)(*avals)
