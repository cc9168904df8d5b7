"""Running emitted Triton kernels: on a GPU through jax-triton, on CPU in Triton's interpreter.

The kernel is built by executing `TritonSource.source` in a fresh namespace
that has ``triton`` and ``triton.language as tl``; the source is registered in
`linecache` first, since ``@triton.jit`` reads a function's source back. One
kernel is built per source text (and mode). Triton picks the interpreter when
``TRITON_INTERPRET=1`` is set as ``@triton.jit`` runs, so the environment
variable is set around the build (and the run) and restored after: building
and interpreting kernels is not thread-safe.

Triton's interpreter expects torch tensors. `run_interpreted` hands it
`_HostArray`, a shim over a numpy array with the few tensor methods the
interpreter calls; its "host copy" is the same numpy memory, so the kernel's
stores land in the arrays that `run_interpreted` returns.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import linecache
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jgraph.core import ConfigError
from jgraph.superopt._ir import BlockGraph
from jgraph.superopt._triton_emit import TritonSource, emit_block, storage_name

__all__ = ["block_call_jax_triton", "compile_for_cuda", "run_interpreted"]

log = logging.getLogger(__name__)
# Fused multiply-adds, as XLA emits them on GPUs (Triton 3.9's default, passed explicitly).
_FP_FUSION = True


@contextlib.contextmanager
def _interpret_env(interpret: bool) -> Iterator[None]:
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.lru_cache(maxsize=256)
def _build(source: str, fn_name: str, interpret: bool) -> Any:
    """The ``@triton.jit`` kernel of ``source`` (an interpreted one if ``interpret``)."""
    import triton
    import triton.language as tl

    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = f"<jgraph-triton-{digest}>"
    # mtime None: linecache.checkcache keeps the entry (there is no file to compare with).
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"triton": triton, "tl": tl, "__name__": f"jgraph_triton_{digest}"}
    with _interpret_env(interpret):
        exec(compile(source, filename, "exec"), namespace)
    log.debug("built Triton kernel %s (%s)", fn_name, "interpreted" if interpret else "jit")
    return namespace[fn_name]


@contextlib.contextmanager
def _interpreting() -> Iterator[None]:
    """``TRITON_INTERPRET=1``, with Triton's own ``@triton.jit`` library functions interpreted.

    ``tl.sum``, ``tl.max`` and ``tl.zeros`` are ``@triton.jit`` functions decorated
    when Triton was imported; unless ``TRITON_INTERPRET=1`` was set then, an
    interpreted kernel cannot call them. They are wrapped for the duration, and
    every attribute of the language modules that the interpreter patches (it
    leaves some patched after a kernel that calls such functions) is restored.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    owners = (tl, tl.core, tl.math, tl.standard, tl.tensor)
    saved = [(m, dict(vars(m))) for m in owners]
    try:
        for name, value in saved[0][1].items():
            if isinstance(value, JITFunction) and not name.startswith("_"):
                setattr(tl, name, InterpretedFunction(value.fn))
        with _interpret_env(True):
            yield
    finally:
        for m, before in saved:
            for name, value in before.items():
                if vars(m).get(name) is not value:
                    setattr(m, name, value)


class _Dtype:
    """A dtype whose ``str`` is the numpy name Triton's type mangling reads ('float32').

    Triton's C++ type mangling caches results by ``hash(dtype)`` (torch's dtypes
    are singletons). The default hash comes from the object's address, which a
    freed shim hands on to the next one: a float16 array then read as float32,
    out-of-bounds accesses and heap corruption. So the hash is the name's, and
    there is one instance per name (`_dtype`).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __hash__(self) -> int:
        return hash(("jgraph-dtype", self.name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Dtype) and other.name == self.name


@functools.cache
def _dtype(name: str) -> _Dtype:
    return _Dtype(name)


class _HostArray:
    """The torch-tensor surface Triton's interpreter uses, over one numpy array.

    The interpreter copies each argument's storage to a host tensor (``cpu``,
    ``new_empty``, ``set_``), runs the kernel on host pointers (``data_ptr``) and
    copies the host storage back (``copy_``). Here host and device are the same
    memory, so every copy is the identity.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.dtype = _dtype(array.dtype.name)

    def data_ptr(self) -> int:
        return int(self.array.ctypes.data)

    def untyped_storage(self) -> _HostArray:
        return self

    def cpu(self) -> _HostArray:
        return self

    def new_empty(self, *shape: Any, **kwargs: Any) -> _HostArray:
        return _HostArray(self.array)

    def set_(self, storage: _HostArray, offset: int, size: Any, stride: Any) -> _HostArray:
        self.array = storage.array
        return self

    def storage_offset(self) -> int:
        return 0

    def size(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def stride(self) -> tuple[int, ...]:
        return tuple(s // self.array.itemsize for s in self.array.strides)

    def copy_(self, other: _HostArray) -> _HostArray:
        return self


def run_interpreted(src: TritonSource, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Runs an emitted kernel over its grid in Triton's CPU interpreter (tests and debugging).

    Outputs start as NaN, so an element no program writes shows as NaN.

    Args:
        src: the kernel (`emit_block`).
        arrays: its operands, of ``src.in_shapes``, in any float dtype (loads widen them).

    Returns:
        The outputs, of ``src.out_shapes`` and ``src.out_dtypes``.

    Raises:
        ConfigError: an operand of the wrong shape.
    """
    ins = [np.ascontiguousarray(a) for a in arrays]
    got = tuple(tuple(a.shape) for a in ins)
    if got != src.in_shapes:
        raise ConfigError(
            "arrays", got, f"the kernel was emitted for {src.in_shapes}", "emit it for these shapes"
        )
    outs = [np.full(s, np.nan, d) for s, d in zip(src.out_shapes, src.out_dtypes, strict=True)]
    kernel = _build(src.source, src.fn_name, True)
    # padded lanes may hold inf/nan (masked before they matter): numpy must not warn
    with _interpreting(), np.errstate(all="ignore"):
        kernel[src.grid](*[_HostArray(a) for a in (*ins, *outs)], **src.constexprs)
    return outs


def block_call_jax_triton(
    block: BlockGraph,
    args: Sequence[Any],
    *,
    storage: Any,
    num_warps: int,
    num_stages: int,
    name: str,
) -> list[Any]:
    """Runs one graph-defined kernel as an emitted Triton kernel through jax-triton.

    Args:
        block: the block graph.
        args: its operands (JAX arrays, row-major), in the block graph's input order.
        storage: the device-memory dtype; 16-bit storage makes matmuls 16-bit with
            float32 accumulation.
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining stages.
        name: the kernel's name (a Python identifier).

    Returns:
        The outputs, in saver order: ``storage`` dtype, or float32 for partials.

    Raises:
        ConfigError: jax-triton (or Triton) is not installed.
    """
    try:
        import jax_triton
    except ImportError as exc:
        raise ConfigError(
            "route", "jax_triton", "needs jax-triton and a CUDA jaxlib",
            "pip install 'jgraph[gpu]' on an NVIDIA machine",
        ) from exc  # fmt: skip
    import inspect

    import jax
    import jax.numpy as jnp

    src = emit_block(block, [tuple(a.shape) for a in args], storage=storage, name=name)
    kernel = _build(src.source, src.fn_name, False)
    out = [
        jax.ShapeDtypeStruct(s, jnp.dtype(d))
        for s, d in zip(src.out_shapes, src.out_dtypes, strict=True)
    ]
    params = inspect.signature(jax_triton.triton_call).parameters
    extra: dict[str, Any] = {"out_type": out} if "out_type" in params else {"out_shape": out}
    if "backend_options" in params:  # explicit, as Triton 3.10 flips its default
        extra["backend_options"] = {"enable_fp_fusion": _FP_FUSION}
    outs = jax_triton.triton_call(
        *args, kernel=kernel, grid=src.grid, num_warps=num_warps, num_stages=num_stages,
        **extra, **src.constexprs,
    )  # fmt: skip
    return list(outs)


def compile_for_cuda(
    src: TritonSource,
    in_dtypes: Sequence[Any],
    *,
    capability: int = 90,
    num_warps: int = 4,
    num_stages: int = 2,
) -> Any:
    """Compiles an emitted kernel for an NVIDIA GPU, down to a cubin, on any machine.

    Triton's ahead-of-time path with its bundled ``ptxas``: no GPU or driver is
    needed, so this catches what only the CUDA compile rejects (layouts, dot
    shapes, register or shared-memory limits) before a kernel reaches a GPU.

    Args:
        src: the kernel (`emit_block`).
        in_dtypes: the dtype of each input pointer (a name or dtype).
        capability: the target's compute capability (90: Hopper).
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining stages.

    Returns:
        Triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _build(src.source, src.fn_name, False)
    ptr = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    names = [storage_name(d) for d in in_dtypes] + list(src.out_dtypes)
    params = [f"in{k}" for k in range(len(in_dtypes))]
    params += [f"out{o}" for o in range(len(src.out_dtypes))]
    signature = {p: ptr[n] for p, n in zip(params, names, strict=True)}
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": _FP_FUSION}
    return triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=dict(src.constexprs)),
        target=GPUTarget("cuda", capability, 32),
        options=options,
    )
